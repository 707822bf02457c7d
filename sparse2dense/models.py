"""Models and tokenizers: the toy's locally built ones, and loading any saved or hub model."""

from __future__ import annotations

import os
import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config

from .config import HardwareSpec, ToyArch

SPECIALS = ["<|pad|>", "<|end|>", "<|unk|>", "<|system|>", "<|user|>", "<|assistant|>"]
# One special token per role keeps toy prompts short; the template is a plain concatenation,
# so a prompt's tokens are always a prefix of prompt + completion (TRL relies on that).
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over printable ASCII with a chat template."""
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m)."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<|pad|>", eos_token="<|end|>", unk_token="<|unk|>",
        additional_special_tokens=SPECIALS[3:],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_toy_model(arch: ToyArch, tokenizer, seed: int) -> torch.nn.Module:
    """A randomly initialised Qwen3 of the given size."""
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
        head_dim=arch.hidden_size // arch.num_heads, intermediate_size=arch.intermediate_size,
        max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def device_for(hardware: HardwareSpec) -> str:
    if hardware.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return hardware.device


def dtype_for(hardware: HardwareSpec) -> torch.dtype:
    return torch.bfloat16 if hardware.precision == "bf16" else torch.float32


def set_threads(hardware: HardwareSpec) -> None:
    torch.set_num_threads(hardware.num_threads or os.cpu_count() or 1)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(path: str | Path, hardware: HardwareSpec, *, trainable: bool, device: str | None = None,
               trust_remote_code: bool = False):
    """A model to train or a frozen one (teacher, sampler).

    Trained weights stay fp32: they are the optimizer's master copy, and bf16 compute comes from
    the trainer's autocast. Stepping AdamW on bf16 weights would round most lr-1e-6 updates away.
    Under FSDP only the first rank reads the checkpoint (see `shapes_only`); the model stays on the CPU
    for the trainer to shard.
    """
    dtype = torch.float32 if trainable else dtype_for(hardware)
    if shapes_only():
        return _empty_model(path, dtype, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, trust_remote_code=trust_remote_code)
    CHECKPOINTS_READ.append(str(path))
    return model if fsdp_loading() else model.to(device or device_for(hardware))


CHECKPOINTS_READ: list[str] = []  # what this process read from disk (a sharded node's placement reports it)


def fsdp_enabled() -> bool:
    """`accelerate launch` with an FSDP config says so in the environment of every rank."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_loading() -> bool:
    """FSDP with cpu_ram_efficient_loading (TRL's fsdp2 config): the trainer shards the model from the first
    rank's copy, so only that rank reads the weights."""
    return fsdp_enabled() and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() == "true"


def shapes_only() -> bool:
    """Every rank but the first builds the model's shapes only: transformers 5 would read the whole checkpoint
    on every rank (2.3 TB of fp32 on an 8-GPU machine for a 70B model)."""
    return fsdp_loading() and int(os.environ.get("RANK", "0")) != 0


def _empty_model(path: str | Path, dtype: torch.dtype, trust_remote_code: bool):
    """The model's parameters on the meta device (buffers, such as rotary frequencies, computed as usual)."""
    from accelerate import init_empty_weights
    from transformers import GenerationConfig

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    model.tie_weights()  # from_config leaves tied embeddings apart on the meta device
    try:  # the end tokens live there
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    except OSError:
        pass
    return model


def end_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a completion: the checkpoint's generation config (a model's, or the config itself)
    may list several (Qwen3 has two), and the tokenizer's end token."""
    config = getattr(model, "generation_config", model)
    configured = getattr(config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in ids if i is not None]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def longest_prompt(tokenizer, prompts, chat_template_kwargs: dict | None = None) -> int:
    """Tokens in the longest chat prompt, generation prompt included, as the trainers tokenize it."""
    kwargs = chat_template_kwargs or {}
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True, **kwargs) for p in prompts]
    return max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def vocab_size(path: str | Path, trust_remote_code: bool = False) -> int:
    return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code).get_text_config().vocab_size


def check_same_vocabulary(teacher: str | Path, student: str | Path, trust_remote_code: bool = False) -> None:
    """Token-level distillation compares distributions over one vocabulary."""
    t, s = vocab_size(teacher, trust_remote_code), vocab_size(student, trust_remote_code)
    if t != s:
        raise ValueError(f"teacher {teacher} has vocabulary {t}, student {student} has {s}: they must match")


def save_model(model, tokenizer, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
