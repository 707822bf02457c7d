from sparse2dense.config import ToyTaskSpec, load_profile
from sparse2dense.data import problems, toy_task
from sparse2dense.data.verify import is_correct
from sparse2dense.models import build_toy_model, build_toy_tokenizer


def test_toy_problems_are_seeded_distinct_and_solved_correctly():
    spec = ToyTaskSpec()
    rows = toy_task.generate(spec, 300, seed=7)
    assert rows == toy_task.generate(spec, 300, seed=7)
    assert len({r["problem"] for r in rows}) == 300
    for r in rows:
        assert eval(r["problem"]) == int(r["answer"]) >= 0
        assert is_correct(r["solution"], r["answer"])
        assert r["solution"].count("\n") == r["problem"].count("+") + r["problem"].count("-")


def test_difficulty_knobs():
    rows = toy_task.generate(ToyTaskSpec(first_digits=3, min_ops=5, max_ops=5), 50, seed=0)
    assert all(len(r["problem"].split("+")[0].split("-")[0]) == 3 for r in rows)
    assert all(r["problem"].count("+") + r["problem"].count("-") == 5 for r in rows)


def test_tokenizer_round_trips_and_has_a_chat_template():
    tok = build_toy_tokenizer()
    text = "47+3=50\n\\boxed{50}"
    assert tok.decode(tok(text)["input_ids"]) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "47+3"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>47+3<|assistant|>"
    assert tok.eos_token == "<|end|>" and tok.pad_token_id != tok.eos_token_id


def test_toy_models_are_qwen3_of_the_configured_size():
    profile = load_profile("toy")
    tok = build_toy_tokenizer()
    teacher = build_toy_model(profile.models.teacher.arch, tok, seed=0)
    student = build_toy_model(profile.models.student.arch, tok, seed=0)
    assert teacher.config.model_type == "qwen3"
    assert teacher.num_parameters() > 5 * student.num_parameters()
    assert teacher.config.vocab_size == student.config.vocab_size == len(tok)


def test_splits_are_disjoint_hashed_and_grow_by_extension():
    profile = load_profile("toy")
    s = problems.splits(profile.data)
    ids = {k: {r["id"] for r in v.rows} for k, v in s.items()}
    assert not ids["labeled"] & ids["heldout"] and not ids["distill"] & ids["heldout"]
    assert all("answer" not in r for r in s["distill"].rows)  # distillation never sees labels
    bigger = problems.splits(load_profile("toy", {"data.labeled_budget": 1024}).data)
    assert ids["labeled"] < {r["id"] for r in bigger["labeled"].rows}
    assert bigger["distill"].fingerprint == s["distill"].fingerprint
    assert bigger["labeled"].fingerprint != s["labeled"].fingerprint


def test_benchmark_is_disjoint_from_training_pools():
    profile = load_profile("toy")
    train, heldout = problems.train_heldout(profile.data)
    test = problems.benchmark(profile.data.benchmarks[0], profile.data)
    assert len(test.rows) == 600
    assert not {r["problem"] for r in test.rows} & {r["problem"] for r in train + heldout}


def test_prompt_joins_problem_and_suffix_as_the_authors_do():
    p = load_profile("qwen3-8b-1.7b")
    msgs = problems.messages("What is 1+1?", p.data)
    assert msgs == [{"role": "user", "content": "What is 1+1?\n\nLet's think step by step and output the final "
                                                "answer within \\boxed{}."}]
