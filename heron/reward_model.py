"""Bradley-Terry reward model: tensors in, rewards out. It knows nothing of SB3 or Gymnasium."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from heron.errors import ConfigError
from heron.features import Encoding

# Where the standardized reward's zero sits: the mean of the latest data, or one of its quantiles.
OFFSET_QUANTILES = {"low": 0.01, "high": 0.99}
OFFSETS = ("mean", *OFFSET_QUANTILES)


@dataclass(frozen=True)
class Units:
    """Behaviours to compare, as rows of a feature matrix.

    :param rows: features of every step, shape (R, D).
    :param index: row indices of each unit's steps, shape (U, L), padded with -1.
    """

    rows: torch.Tensor
    index: torch.Tensor


@dataclass
class FitStats:
    """What one refit did: mean Bradley-Terry loss, pair accuracy on the new pairs before training
    (how well the model predicted preferences it had not seen), and the number of labeled pairs."""

    loss: float
    accuracy_before: float
    pairs: int


class RewardModel(nn.Module):
    """An MLP (or an ensemble of MLPs run as one batched network) scoring single steps.

    The reward of a unit (a transition, segment or episode) is the sum of its steps' scores.
    ``reward()`` returns the ensemble mean, standardized with statistics refreshed by the trainer.

    :param input_dim: width of a step's feature vector.
    :param hidden: hidden layer widths.
    :param ensemble: number of members, trained on the same pairs from different initializations.
    :param normalize: standardize the output to unit std over the latest training data, shifted so
        that ``offset`` maps to 0.
    :param offset: ``"mean"`` (zero mean), ``"low"`` (the 1st percentile is 0: almost every step
        positive) or ``"high"`` (the 99th percentile is 0: almost every step negative).
    :param scale: the std of the normalized reward (match the reward scale the agent's
        hyperparameters were tuned for; SAC's entropy coefficient is relative to it).
    :param encoding: how raw observations, actions and factors become feature rows; saved with the
        model, so that :meth:`reward` scores raw inputs after :meth:`load` (None: :meth:`score` only).
    """

    def __init__(
        self,
        input_dim: int,
        hidden: Sequence[int] = (256, 256),
        ensemble: int = 1,
        normalize: bool = True,
        offset: str = "mean",
        scale: float = 1.0,
        encoding: Encoding | None = None,
    ) -> None:
        super().__init__()
        self.out_shift: torch.Tensor
        self.out_std: torch.Tensor
        if input_dim < 1:
            raise ConfigError(f"reward_model: input_dim must be >= 1, got {input_dim}")
        if ensemble < 1:
            raise ConfigError(f"reward_model.ensemble must be >= 1, got {ensemble}")
        if offset not in OFFSETS:
            raise ConfigError(f"reward_model.offset must be one of {', '.join(OFFSETS)}, got {offset!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"reward_model.scale must be a finite number > 0, got {scale!r}")
        if encoding is not None and encoding.dim != input_dim:
            raise ConfigError(f"reward_model: the encoding is {encoding.dim} wide, input_dim is {input_dim}")
        self.encoding = encoding
        self.config: dict[str, Any] = {
            "input_dim": int(input_dim),
            "hidden": [int(h) for h in hidden],
            "ensemble": int(ensemble),
            "normalize": bool(normalize),
            "offset": offset,
            "scale": float(scale),
        }
        widths = [int(input_dim), *(int(h) for h in hidden), 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(widths):
            w = torch.empty(ensemble, fan_in, fan_out)
            for member in w:
                nn.init.kaiming_uniform_(member.T, a=5**0.5)
            bound = 1 / fan_in**0.5
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.empty(ensemble, 1, fan_out).uniform_(-bound, bound)))
        self.register_buffer("out_shift", torch.zeros(()))
        self.register_buffer("out_std", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw scores of every member, shape (E, N)."""
        h = x.unsqueeze(0).expand(len(self.weights[0]), -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = F.relu(h)
        return h.squeeze(-1)

    @torch.no_grad()
    def score(self, x: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
        """Per-step learned reward of feature rows (N, D): the ensemble mean, standardized; shape (N,)."""
        out = torch.cat([self(part).mean(0) for part in x.split(chunk)]) if len(x) else x.new_zeros(0)
        if self.config["normalize"]:
            out = (out - self.out_shift) / self.out_std * self.config["scale"]
        return out

    def reward(self, *, obs: Any = None, action: Any = None, next_obs: Any = None, factors: Any = None) -> np.ndarray:
        """Per-step learned reward of raw inputs, one per row: shaped like the inputs' leading axes.

        Give the fields the model reads (``encoding.inputs``): observations and actions as the env
        gives and takes them, stacked (Discrete and MultiDiscrete as integers, MultiBinary as 0/1, a
        Dict as a dict key -> array, a Tuple as a tuple of arrays), factors as an array whose last
        axis follows ``encoding.factors`` or as a dict name -> array.
        """
        if self.encoding is None:
            raise ConfigError("reward_model: this model has no input encoding; score feature rows with score()")
        given = {"obs": obs, "action": action, "next_obs": next_obs, "factors": factors}
        encoded, lead = self.encoding.encode(given, self.encoding.inputs)
        rows, finite = self.encoding.rows(encoded)
        return masked_scores(self, rows, finite).reshape(lead)

    @torch.no_grad()
    def refresh_normalization(self, x: torch.Tensor) -> None:
        """Set the output shift and scale from the raw ensemble-mean scores of ``x`` (kept when ``x`` is empty)."""
        if len(x) == 0:
            return
        raw = torch.cat([self(part).mean(0) for part in x.split(65_536)])
        offset = self.config["offset"]
        self.out_shift.copy_(raw.mean() if offset == "mean" else torch.quantile(raw, OFFSET_QUANTILES[offset]))
        self.out_std.copy_(raw.std().clamp_min(1e-6) if len(raw) > 1 else torch.ones(()))

    def unit_scores(self, units: Units, which: torch.Tensor) -> torch.Tensor:
        """Summed raw scores of the chosen units, shape (E, len(which)): one forward pass."""
        index = units.index[which]
        mask = index >= 0
        scores = self(units.rows[index.clamp_min(0).reshape(-1)]).reshape(-1, *index.shape)
        return torch.where(mask, scores, 0.0).sum(-1)

    def save(self, path: str | Path) -> None:
        """Write the weights and architecture to a safetensors file (no pickle)."""
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        metadata = {"config": json.dumps(self.config), "sha256": _tensors_sha256(tensors)}
        if self.encoding is not None:
            metadata["encoding"] = json.dumps(self.encoding.as_json())
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        """Rebuild a model saved with :meth:`save`."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if "config" not in meta:
                raise ConfigError(f"{path}: not a heron reward model (no config metadata)")
            encoding = Encoding.from_json(json.loads(meta["encoding"])) if "encoding" in meta else None
            model = cls(**json.loads(meta["config"]), encoding=encoding)
            tensors = load_file(str(path))
            if meta.get("sha256") != _tensors_sha256(tensors):  # bytes changed inside a tensor still load
                raise ConfigError(f"{path}: the weights do not match their checksum (damaged or edited)")
            model.load_state_dict(tensors)
        except ConfigError:
            raise
        except Exception as err:  # a damaged or foreign file: name it, in one line
            raise ConfigError(f"{path}: not a readable heron reward model ({type(err).__name__})") from None
        if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()):
            raise ConfigError(f"{path}: the reward model holds non-finite weights")
        return model


@dataclass(frozen=True)
class TrainerConfig:
    """Bradley-Terry optimisation settings.

    :param lr: Adam learning rate.
    :param weight_decay: L2 penalty; keeps the unbounded Bradley-Terry optimum in check.
    :param epochs: passes over the labeled pairs per refit.
    :param batch_size: pairs per minibatch.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 2
    batch_size: int = 256


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, shapes, dtypes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def masked_scores(model: RewardModel, rows: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Rewards of feature rows; 0 (what ``reward_model.offset`` makes neutral) where the inputs were not finite."""
    scores = model.score(torch.from_numpy(rows)).numpy()
    if not finite.all():
        scores[~finite] = 0.0
    return scores


class BradleyTerryTrainer:
    """Fits a :class:`RewardModel` on labeled pairs, one batched forward/backward per minibatch.

    Minibatches are consecutive blocks of ``batch_size`` pairs, visited in a new random order each
    epoch. Each unit in a block is scored once however many of the block's pairs it is in, so pairs
    drawn in groups that share units (see :func:`heron.preferences.sample_pairs`) cost fewer forward
    passes than independent pairs.
    """

    def __init__(self, model: RewardModel, config: TrainerConfig, seed: int = 0) -> None:
        self.model = model
        self.config = config
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
        self.generator = torch.Generator().manual_seed(seed)

    def fit(self, units: Units, pairs: torch.Tensor, labels: torch.Tensor) -> FitStats:
        """Train on pairs of unit indices (P, 2) with labels +1 (first preferred), -1, or 0 (ignored).

        The accuracy reported is measured before training, on pairs the model had not seen.
        """
        labeled = labels != 0
        n_labeled = int(labeled.sum())
        if n_labeled == 0:
            return FitStats(float("nan"), float("nan"), 0)
        # Order every pair as (winner, loser); unlabeled pairs keep their slot (weight 0) so that
        # blocks stay aligned with the groups they were drawn in.
        winners = torch.where(labels > 0, pairs[:, 0], pairs[:, 1])
        losers = torch.where(labels > 0, pairs[:, 1], pairs[:, 0])
        before = self.accuracy(units, winners[labeled], losers[labeled])
        # Everything a minibatch needs is gathered once per fit, not once per step: its distinct
        # units' step rows and mask, and where each pair's winner and loser sit among them.
        blocks = []
        for batch in torch.arange(len(pairs)).split(self.config.batch_size):
            w = labeled[batch]
            if not w.any():
                continue
            distinct, where = torch.unique(torch.cat([winners[batch], losers[batch]]), return_inverse=True)
            index = units.index[distinct]
            rows = units.rows[index.clamp_min(0).reshape(-1)]
            blocks.append((rows, index >= 0, where.reshape(2, -1), w.float(), float(w.sum())))
        losses = []
        for _ in range(self.config.epochs):
            for b in torch.randperm(len(blocks), generator=self.generator).tolist():
                losses.append(self.loss_and_gradients(*blocks[b]))
                self.optimizer.step()
        return FitStats(float(torch.stack(losses).mean()), before, n_labeled)

    @torch.no_grad()
    def loss_and_gradients(
        self, rows: torch.Tensor, mask: torch.Tensor, where: torch.Tensor, weight: torch.Tensor, n: float
    ) -> torch.Tensor:
        """Bradley-Terry loss of one minibatch; its gradient is written to every parameter's ``.grad``.

        The backward pass of the MLP is written out (a handful of batched matmuls) instead of going
        through autograd: for networks this small the autograd graph costs more than the arithmetic
        (0.55 against 0.88 ms per 256-pair step on 2 cores). ``tests/test_reward_model.py`` checks
        the gradients against autograd's.

        :param rows: step features of the minibatch's distinct units, shape (U * L, D).
        :param mask: which of each unit's L step slots are real, shape (U, L).
        :param where: positions of each pair's winner (row 0) and loser (row 1) among the U units.
        :param weight: 1 for a labeled pair, 0 for an unlabeled one; ``n`` is their sum.
        """
        weights, biases = list(self.model.weights), list(self.model.biases)
        ensemble = len(weights[0])
        activations = [rows.unsqueeze(0).expand(ensemble, -1, -1)]
        h = activations[0]
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < len(weights) - 1:
                h = h.relu_()
                activations.append(h)
        scores = (h.reshape(ensemble, *mask.shape) * mask).sum(-1)
        margin = scores[:, where[0]] - scores[:, where[1]]
        loss = -(F.logsigmoid(margin) * weight).sum(-1).mean() / n
        d_margin = torch.sigmoid(-margin).mul_(weight).mul_(-1.0 / (n * ensemble))
        d_scores = torch.zeros_like(scores).index_add_(1, where[0], d_margin).index_add_(1, where[1], -d_margin)
        grad = (d_scores.unsqueeze(-1) * mask).reshape(ensemble, -1, 1)
        for i in reversed(range(len(weights))):
            weights[i].grad = torch.bmm(activations[i].transpose(1, 2), grad)
            biases[i].grad = grad.sum(1, keepdim=True)
            if i > 0:
                grad = torch.bmm(grad, weights[i].transpose(1, 2)).mul_(activations[i] > 0)
        return loss

    def _margins(self, units: Units, winners: torch.Tensor, losers: torch.Tensor) -> torch.Tensor:
        """Score differences (E, B), each distinct unit scored once."""
        distinct, where = torch.unique(torch.cat([winners, losers]), return_inverse=True)
        scores = self.model.unit_scores(units, distinct)[:, where]
        return scores[:, : len(winners)] - scores[:, len(winners) :]

    @torch.no_grad()
    def accuracy(self, units: Units, winners: torch.Tensor, losers: torch.Tensor) -> float:
        """Share of (winner, loser) pairs the ensemble-mean model orders correctly."""
        if len(winners) == 0:
            return float("nan")
        correct = sum(
            int((self._margins(units, w, lo).mean(0) > 0).sum())
            for w, lo in zip(winners.split(8192), losers.split(8192), strict=True)
        )
        return correct / len(winners)

    def state_dict(self) -> dict[str, object]:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self.generator.set_state(state["generator"])  # type: ignore[arg-type]
