"""The paper's stages as plain functions: typed settings and paths in, a small manifest out.

Each training stage writes its final model to `<out>/model`, keeps its last checkpoint under
`<out>/checkpoints` and resumes from it when run again after a failure.
"""
