"""Training on preference pairs from ratings with trl: a reward model (``RewardTrainer``) or DPO.

Every method goes through one code path::

    ratings -> held-out split by prompt -> pairs (the method's teacher) -> trl dataset
            -> trainer -> per-response scores on held-out prompts -> accuracy per label source

The methods differ only in their teacher, the ranking that labels the training pairs:

* ``heron``: the config's ``hierarchy`` (the decision tree, level by level);
* ``weighted-sum``: one level, ``sum_k w_k z_k`` with ``weights`` (HelpSteer2's by default);
* ``helpfulness``: one level, the ``helpfulness`` rating alone;
* ``flat-preference``: one level, the unweighted sum of the hierarchy's attributes (a ``min``
  attribute counts negatively): the same factors without their order.

A sum is a column added to the rating table, so every teacher is a :class:`heron.Hierarchy` and
every pair comes from :func:`heron.lm.pairs_from_ratings` (vectorized, no loop per pair).

Evaluation scores each held-out response once (the reward model's output, or DPO's implicit reward
``beta * (log pi(y|x) - log pi_ref(y|x))``); the accuracy under any labeling of the held-out pairs
is then array indexing. ``transformers`` and ``trl`` are imported only when a run starts.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib.util
import json
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, field_validator, model_validator

from heron.config import _Strict, validate_model
from heron.errors import ConfigError
from heron.hierarchy import Factor, Hierarchy
from heron.lm.pairs import (
    Pairs,
    _group_codes,
    _numeric,
    _object_array,
    pairs_from_ratings,
    parse_hierarchy,
    read_ratings,
)

# HelpSteer2 paper (Wang et al. 2024, arXiv 2406.08673), appendix H: the weights of the attribute
# ratings that turn its multi-attribute reward model into one score.
HELPSTEER2_WEIGHTS = {"helpfulness": 0.65, "correctness": 0.8, "coherence": 0.45, "complexity": 0.55, "verbosity": -0.4}


def finite_weights(weights: dict[str, float]) -> dict[str, float]:
    """``weights`` when there is at least one and each is finite (a ValueError for pydantic otherwise)."""
    if not weights:
        raise ValueError("give at least one weight")
    bad = [name for name, w in weights.items() if not math.isfinite(w)]
    if bad:
        raise ValueError(f"weight of {bad[0]!r} is not finite")
    return weights


class TinyModelConfig(_Strict):
    """A GPT-2 built from a config (no download) with a word-level tokenizer trained on the ratings.

    :param layers: transformer blocks.
    :param width: embedding width.
    :param heads: attention heads (divides ``width``).
    """

    layers: int = Field(2, ge=1, le=48)
    width: int = Field(32, ge=8, le=4096)
    heads: int = Field(2, ge=1, le=64)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyModelConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self


class LMTrainConfig(_Strict):
    """One ``heron lm train`` run.

    :param ratings: a rating file (``.jsonl``, ``.csv``, ``.parquet``; ``heron lm generate`` writes one)
        or a Hugging Face dataset name.
    :param split: the split of a dataset name.
    :param prompt: the column holding the prompt.
    :param response: the column holding the rated response.
    :param hierarchy: the ranking, most important first (``"correctness>helpfulness>coherence"``,
        each ``NAME[:max|min][:MARGIN[std]]``): the teacher of ``heron``, the attributes of
        ``flat-preference``, and a label source of the evaluation.
    :param method: ``heron``, ``weighted-sum``, ``helpfulness`` or ``flat-preference``.
    :param weights: attribute weights of ``weighted-sum`` (HelpSteer2's by default).
    :param trainer: ``reward`` (trl's RewardTrainer, Bradley-Terry) or ``dpo`` (trl's DPOTrainer).
    :param model: ``tiny`` (built from ``tiny``) or a local directory holding a transformers model
        and its tokenizer.
    :param tiny: the size of the ``tiny`` model.
    :param margin: reward trainer only: pass each pair's gap at the deciding level as trl's
        ``margin`` (the loss becomes ``-log sigmoid(r_chosen - r_rejected - gap)``).
    :param beta: DPO's beta (strength of the pull towards the reference model).
    :param seed: seeds the split, the model's initialization and the trainer.
    :param eval_fraction: share of the prompts held out (their pairs are never trained on).
    :param epochs: passes over the training pairs.
    :param max_steps: optimizer steps to stop after (0: no limit beyond ``epochs``).
    :param batch_size: pairs per optimizer step.
    :param lr: learning rate.
    :param max_length: tokens of prompt and response; longer pairs are dropped from training (trl)
        and truncated when scored.
    :param out: output directory (model, tokenizer, ``metrics.json``, ``accuracy.csv``, ``config.yaml``).
    """

    ratings: str
    split: str = "train"
    prompt: str = "prompt"
    response: str = "response"
    hierarchy: str = "correctness>helpfulness>coherence"
    method: Literal["heron", "weighted-sum", "helpfulness", "flat-preference"] = "heron"
    weights: dict[str, float] = Field(default_factory=lambda: dict(HELPSTEER2_WEIGHTS))
    trainer: Literal["reward", "dpo"] = "reward"
    model: str = "tiny"
    tiny: TinyModelConfig = TinyModelConfig()
    margin: bool = False
    beta: float = Field(0.1, gt=0.0, allow_inf_nan=False)
    seed: int = 0
    eval_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    epochs: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    max_steps: int = Field(0, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0.0, allow_inf_nan=False)
    max_length: int = Field(512, ge=8)
    out: str = "runs/lm"

    @field_validator("hierarchy")
    @classmethod
    def _parses(cls, text: str) -> str:
        try:
            parse_hierarchy(text)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return text

    @field_validator("model")
    @classmethod
    def _tiny_or_directory(cls, model: str) -> str:
        if model != "tiny" and not Path(model).is_dir():
            raise ValueError(f"{model!r} is neither 'tiny' nor a local model directory")
        return model

    @field_validator("weights")
    @classmethod
    def _finite(cls, weights: dict[str, float]) -> dict[str, float]:
        return finite_weights(weights)

    @model_validator(mode="after")
    def _margin_needs_reward(self) -> LMTrainConfig:
        if self.margin and self.trainer != "reward":
            raise ValueError("margin: only the reward trainer reads a margin (set trainer: reward or margin: false)")
        return self

    @property
    def ranking(self) -> Hierarchy:
        """The parsed ``hierarchy``."""
        return parse_hierarchy(self.hierarchy)


def validate(data: Any, source: str = "config") -> LMTrainConfig:
    """An :class:`LMTrainConfig` from a mapping; a one-line :class:`ConfigError` naming the first bad field."""
    return validate_model(LMTrainConfig, data, source)


# -- teachers and label sources ----------------------------------------------------------------------


def _sum_column(table: Mapping[str, Sequence[Any]], weights: Mapping[str, float]) -> np.ndarray:
    """``sum_k w_k z_k`` per row, vectorized; a missing rating gives NaN (the pair is dropped as missing)."""
    for name in weights:
        if name not in table:
            raise ConfigError(f"weights: {name!r} is not a column of the ratings (columns: {', '.join(table)})")
    z = np.stack([_numeric(table[name], name) for name in weights], axis=1)
    return z @ np.array(list(weights.values()), dtype=np.float64)


def label_sources(
    config: LMTrainConfig, columns: Sequence[str] | None = None
) -> dict[str, tuple[Hierarchy, dict[str, float] | None]]:
    """Every labeling of pairs that a run trains on or is evaluated against.

    Each is a ranking and, for a sum, the weights of the column it ranks (named after the source):
    the config's hierarchy (``heron``), ``weighted-sum``, ``flat-preference``, then each attribute
    alone (with its direction in the hierarchy, else the sign of its weight).

    :param columns: the rating table's columns, when known: a source that needs a column the table
        lacks is left out, unless the method trains on it or it is the hierarchy (those errors
        name the column when the pairs are labeled).
    """
    ranking = config.ranking
    flat = {f.name: float(f.sign) for f in ranking.factors}
    sources: dict[str, tuple[Hierarchy, dict[str, float] | None]] = {
        "heron": (ranking, None),
        "weighted-sum": (Hierarchy([Factor("weighted-sum")]), dict(config.weights)),
        "flat-preference": (Hierarchy([Factor("flat-preference")]), flat),
    }
    directions = {f.name: f.direction for f in ranking.factors}
    for name, w in config.weights.items():
        directions.setdefault(name, "min" if w < 0 else "max")
    for name, direction in directions.items():
        sources[f"{name}:{direction}" if direction == "min" else name] = (Hierarchy([Factor(name, direction)]), None)
    # the teacher of method ``helpfulness``, even where the hierarchy or the weights rank it as a cost
    sources.setdefault("helpfulness", (Hierarchy([Factor("helpfulness")]), None))
    if columns is None:
        return sources
    return {
        name: (source_ranking, weights)
        for name, (source_ranking, weights) in sources.items()
        if name in ("heron", config.method) or set(weights or source_ranking.names) <= set(columns)
    }


def label_pairs(
    table: Mapping[str, Sequence[Any]],
    source: tuple[Hierarchy, dict[str, float] | None],
    name: str,
    config: LMTrainConfig,
) -> Pairs:
    """The pairs of ``table`` labeled by one label source (see :func:`label_sources`)."""
    ranking, weights = source
    columns: dict[str, Any] = dict(table)
    if weights is not None:
        columns[name] = _sum_column(table, weights)
    return pairs_from_ratings(columns, ranking, prompt=config.prompt, response=config.response)


# -- split -------------------------------------------------------------------------------------------


def split_by_prompt(
    table: Mapping[str, Sequence[Any]], prompt: str, fraction: float, seed: int
) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """(train, held-out) tables; ``fraction`` of the distinct prompts is held out (at least one, never all)."""
    if prompt not in table:
        raise ConfigError(f"prompt column {prompt!r} is not a column of the ratings (columns: {', '.join(table)})")
    codes = _group_codes(_object_array(table[prompt]))  # the same prompts as pairs_from_ratings groups
    firsts = np.unique(codes)  # one row per prompt, in the order prompts first appear
    if len(firsts) < 2:
        raise ConfigError(f"the ratings hold {len(firsts)} distinct prompt(s); a held-out split needs at least 2")
    held = np.random.default_rng(seed).permutation(len(firsts))[
        : min(len(firsts) - 1, max(1, round(fraction * len(firsts))))
    ]
    mask = np.isin(codes, firsts[held])
    columns = {name: _object_array(values) for name, values in table.items()}
    return (
        {name: values[~mask].tolist() for name, values in columns.items()},
        {name: values[mask].tolist() for name, values in columns.items()},
    )


# -- models ------------------------------------------------------------------------------------------


def build_tokenizer(texts: Sequence[str]) -> Any:
    """A word-level tokenizer trained on ``texts``: words and punctuation, digits one by one.

    Digits split so that every number is spelled from ten tokens (no unknown numbers in held-out
    prompts). Special tokens: ``<pad>``, ``<unk>``, ``<eos>``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def build_models(config: LMTrainConfig, texts: Sequence[str]) -> tuple[Any, Any, Any]:
    """(model, reference model or None, tokenizer) for the config's trainer.

    The reference model of DPO is a frozen copy of the policy before training.
    """
    import torch
    import transformers

    torch.manual_seed(config.seed)
    head = (
        transformers.AutoModelForSequenceClassification
        if config.trainer == "reward"
        else transformers.AutoModelForCausalLM
    )
    if config.model == "tiny":
        tokenizer = build_tokenizer(texts)
        gpt2 = transformers.GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=config.max_length,
            n_embd=config.tiny.width,
            n_layer=config.tiny.layers,
            n_head=config.tiny.heads,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
        gpt2.num_labels = 1  # one score per sequence (the reward head)
        model = head.from_config(gpt2)
    else:
        path = Path(config.model)  # a directory: LMTrainConfig checked it
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            kwargs = {"num_labels": 1} if config.trainer == "reward" else {}
            model = head.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model: cannot load {path}: {' '.join(str(err).split())}") from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    reference = None
    if config.trainer == "dpo":
        reference = copy.deepcopy(model).eval()
        reference.requires_grad_(False)
    return model, reference, tokenizer


# -- scoring held-out responses ----------------------------------------------------------------------


def _batches(n: int, size: int) -> Any:
    return (range(start, min(start + size, n)) for start in range(0, n, size))


def reward_scores(
    model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], config: LMTrainConfig
) -> np.ndarray:
    """The reward model's output for each (prompt, response), formatted as trl's RewardTrainer trains on it."""
    import torch

    texts = [p + r + tokenizer.eos_token for p, r in zip(prompts, responses, strict=True)]
    out = np.empty(len(texts))
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for batch in _batches(len(texts), 64):
            enc = tokenizer(
                [texts[i] for i in batch],
                padding=True,
                truncation=True,
                max_length=config.max_length,
                return_tensors="pt",
                add_special_tokens=False,
            ).to(device)
            out[batch.start : batch.stop] = model(**enc).logits[:, 0].float().cpu().numpy()
    return out


def implicit_rewards(
    policy: Any, reference: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], config: LMTrainConfig
) -> np.ndarray:
    """DPO's implicit reward ``beta * (log pi(y|x) - log pi_ref(y|x))`` per (prompt, response), summed over y's tokens.

    Tokenized as trl's DPOTrainer does: the prompt's tokens, then the rest of ``prompt + response + eos``.
    """
    import torch

    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(
        [p + r + tokenizer.eos_token for p, r in zip(prompts, responses, strict=True)], add_special_tokens=False
    )["input_ids"]
    rows, starts = [], []
    for prompt, full in zip(prompt_ids, full_ids, strict=True):
        start = next(
            (i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), min(len(prompt), len(full))
        )
        rows.append(torch.tensor(full[: config.max_length]))
        starts.append(min(start, len(rows[-1]) - 1))
    lengths, first = torch.tensor([len(r) for r in rows]), torch.tensor(starts)
    device = next(policy.parameters()).device
    out = np.empty(len(rows))
    policy.eval()
    with torch.no_grad():
        for batch in _batches(len(rows), 64):
            ids = torch.nn.utils.rnn.pad_sequence(
                [rows[i] for i in batch], batch_first=True, padding_value=tokenizer.pad_token_id
            )
            position = torch.arange(ids.shape[1])
            mask = (position < lengths[batch.start : batch.stop, None]).long()
            completion = mask.bool() & (position >= first[batch.start : batch.stop, None])
            ids, mask, completion = ids.to(device), mask.to(device), completion.to(device)
            logps = []
            for model in (policy, reference):
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                token = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None])[..., 0]
                logps.append((token * completion[:, 1:]).sum(-1))
            out[batch.start : batch.stop] = (config.beta * (logps[0] - logps[1])).cpu().numpy()
    return out


def pair_accuracy(scores: np.ndarray, pairs: Pairs) -> float | None:
    """Share of pairs whose chosen response scores higher (a tie counts one half); None without pairs."""
    if not len(pairs):
        return None
    diff = scores[pairs.chosen] - scores[pairs.rejected]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


# -- the run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMTrainResult:
    """What ``heron lm train`` produced.

    :param out: the output directory.
    :param accuracy: per label source, held-out pair accuracy and pair count
        (``{"labels", "accuracy", "pairs", "trained_on"}`` rows).
    :param metrics: everything written to ``metrics.json``.
    :param scores: per held-out response (in the order of the held-out table), the reward model's
        score or DPO's implicit reward.
    :param model: the trained model (the policy for DPO).
    :param tokenizer: its tokenizer.
    """

    out: Path
    accuracy: list[dict[str, Any]]
    metrics: dict[str, Any]
    scores: np.ndarray
    model: Any
    tokenizer: Any


def train_lm(config: LMTrainConfig | Mapping[str, Any], *, progress: bool = False) -> LMTrainResult:
    """Train a reward model or a DPO policy on pairs labeled by the method's teacher, then evaluate it.

    :param config: an :class:`LMTrainConfig` or a mapping of its settings.
    :param progress: show trl's progress bar and logs.
    """
    config = validate(config)
    out = Path(config.out)
    table = read_ratings(config.ratings, split=config.split)
    sources = label_sources(config, list(table))
    trained_on = config.method
    try:  # errors name the column; pairs_from_ratings checks the response column and the attributes
        train_table, eval_table = split_by_prompt(table, config.prompt, config.eval_fraction, config.seed)
        train_pairs = label_pairs(train_table, sources[trained_on], trained_on, config)
        eval_pairs = {name: label_pairs(eval_table, source, name, config) for name, source in sources.items()}
    except ConfigError as err:
        raise ConfigError(f"{config.ratings}: {err}") from None
    if not len(train_pairs):
        raise ConfigError(f"{config.ratings}: no training pairs ({train_pairs.report.summary()})")

    missing = [name for name in ("trl", "transformers", "datasets") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"training needs {', '.join(missing)}: pip install 'heron-rl[lm]'")
    import datasets

    columns = train_pairs.columns()
    data = {key: columns[key] for key in ("prompt", "chosen", "rejected")}
    if config.margin:
        data["margin"] = columns["gap"]
    dataset = datasets.Dataset.from_dict(data)
    texts = [*map(str, train_table[config.prompt]), *map(str, train_table[config.response])]
    model, reference, tokenizer = build_models(config, texts)
    with _progress_bars(progress), _quiet_deprecations():
        trainer = _trainer(config, model, reference, tokenizer, dataset, out, progress)
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    scores = _scores(config, trainer.model, reference, tokenizer, eval_table)
    accuracy = [
        {
            "labels": name,
            "accuracy": pair_accuracy(scores, pairs),
            "pairs": len(pairs),
            "trained_on": name == trained_on,
        }
        for name, pairs in eval_pairs.items()
    ]
    train_scores = _scores(config, trainer.model, reference, tokenizer, train_table)
    words = np.array([len(str(r).split()) for r in eval_table[config.response]], dtype=np.float64)
    metrics = {
        "method": config.method,
        "trainer": config.trainer,
        "trained_on": trained_on,
        "train_pairs": train_pairs.report.summary(),
        "train_pairs_kept": len(trainer.train_dataset),  # trl drops pairs longer than max_length
        "train_prompts": train_pairs.report.prompts,
        "eval_prompts": eval_pairs["heron"].report.prompts,
        "eval_responses": len(scores),
        "steps": trainer.state.global_step,
        "train_seconds": round(seconds, 2),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "train_accuracy": pair_accuracy(train_scores, train_pairs),
        "accuracy": accuracy,
        "score_length_corr": _corr(scores, words),
    }
    out.mkdir(parents=True, exist_ok=True)
    with _progress_bars(progress):  # the model's own format: trainer.save_model would add a pickle of the args
        trainer.model.save_pretrained(str(out / "model"))
    with contextlib.suppress(OSError):
        (out / "trainer").rmdir()  # trl's working directory, empty when nothing is checkpointed
    tokenizer.save_pretrained(str(out / "model"))
    (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with (out / "accuracy.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["labels", "accuracy", "pairs", "trained_on"])
        writer.writeheader()
        writer.writerows(accuracy)
    return LMTrainResult(out, accuracy, metrics, scores, trainer.model, tokenizer)


def _scores(
    config: LMTrainConfig, model: Any, reference: Any, tokenizer: Any, table: Mapping[str, Sequence[Any]]
) -> np.ndarray:
    """Per row of ``table``: the reward model's score, or DPO's implicit reward."""
    prompts = [str(p) for p in table[config.prompt]]
    responses = [str(r) for r in table[config.response]]
    if config.trainer == "reward":
        return reward_scores(model, tokenizer, prompts, responses, config)
    return implicit_rewards(model, reference, tokenizer, prompts, responses, config)


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; None when either side is constant or too short."""
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _trainer(
    config: LMTrainConfig, model: Any, reference: Any, tokenizer: Any, dataset: Any, out: Path, progress: bool
) -> Any:
    """trl's trainer for the config, with settings that suit a small local run (no saving, no reporting)."""
    import torch

    steps = math.ceil(len(dataset) / config.batch_size) * config.epochs
    if config.max_steps:
        steps = min(steps, config.max_steps)
    common: dict[str, Any] = {
        "output_dir": str(out / "trainer"),
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps or -1,
        "per_device_train_batch_size": config.batch_size,
        "learning_rate": config.lr,
        "max_length": config.max_length,
        "seed": config.seed,
        "logging_steps": max(1, int(steps) // 20),
        "save_strategy": "no",
        "report_to": "none",
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "dataloader_pin_memory": torch.cuda.is_available(),
        "gradient_checkpointing": False,  # trl turns it on by default; small models gain nothing from it
        "disable_tqdm": not progress,
        "log_level": "info" if progress else "error",
    }
    trainer: Any
    if config.trainer == "reward":
        from trl import RewardConfig, RewardTrainer

        args = RewardConfig(**common)
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    else:
        from trl import DPOConfig, DPOTrainer

        dpo_args = DPOConfig(beta=config.beta, **common)
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=dpo_args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    if not progress:  # without a progress bar, transformers prints every log entry instead
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn the progress bars of ``datasets`` and ``transformers`` off unless ``enabled``; restore them after."""
    import datasets
    from transformers.utils import logging as hf_logging

    on = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    if not enabled:
        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if on[0]:
            datasets.enable_progress_bars()
        if on[1]:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silence transformers' warnings about gradient checkpointing names that trl still uses (renamed in v5)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
        yield
