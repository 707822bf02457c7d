"""Problems and their answers: the toy task, hub datasets, the labeled splits and prompts, and the answer checkers.

Imports neither torch nor transformers: planning reads the splits without them.
"""
