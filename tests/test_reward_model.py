"""Reward model: Bradley-Terry fitting on a known lexicographic order, ensembles, normalization, files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from heron import ConfigError, Factor, Hierarchy, RewardModel
from heron.preferences import aggregate, sample_pairs
from heron.reward_model import BradleyTerryTrainer, FitStats, TrainerConfig, Units

# Three factors ranked a (max) > b (min) > c (max). a and b are small integers, so ties at the top
# levels are common and many pairs are decided further down; gaps within the margins are ties.
HIERARCHY = Hierarchy([Factor("a", "max", 0.5), Factor("b", "min", 0.5), Factor("c", "max", 0.05)])


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny networks: intra-op threading only adds overhead (and is very slow on shared CPUs).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def make_units(rng, n_units, length, mix):
    """Step factors, unit index (-1 padded when length > 1), per-unit summed factors, step features."""
    n = n_units * length
    z = np.stack([rng.integers(0, 3, n), rng.integers(0, 3, n), rng.random(n) * 0.2], axis=1).astype(float)
    index = np.arange(n).reshape(n_units, length)
    if length > 1:
        lengths = rng.integers(1, length + 1, n_units)
        index[np.arange(length) >= lengths[:, None]] = -1
    return Units(torch.as_tensor(z @ mix, dtype=torch.float32), torch.from_numpy(index)), aggregate(z, index, "sum")


def labeled_pairs(rng, z_units, n_pairs):
    pairs = sample_pairs(len(z_units), n_pairs, rng)
    detail = HIERARCHY.compare_detailed(z_units[pairs[:, 0]], z_units[pairs[:, 1]])
    keep = detail.labels != 0
    return (
        torch.from_numpy(pairs[keep]),
        torch.from_numpy(detail.labels[keep].astype(np.int64)),
        detail.levels[keep],
    )


def winners_losers(pairs, labels):
    return (
        torch.where(labels > 0, pairs[:, 0], pairs[:, 1]),
        torch.where(labels > 0, pairs[:, 1], pairs[:, 0]),
    )


@pytest.mark.parametrize(
    ("length", "ensemble", "mixed"),
    [(1, 1, False), (1, 3, True), (4, 1, False), (4, 2, True)],
    ids=["transitions", "transitions-ensemble-mixed", "segments", "segments-ensemble-mixed"],
)
def test_learns_a_lexicographic_order_that_generalizes(length, ensemble, mixed):
    rng = np.random.default_rng(length * 10 + ensemble)
    # Features are the factors themselves or a random invertible linear mix of them.
    mix = rng.normal(size=(3, 3)) if mixed else np.eye(3)
    assert abs(np.linalg.det(mix)) > 1e-3
    model = RewardModel(3, hidden=(64, 64), ensemble=ensemble)
    trainer = BradleyTerryTrainer(model, TrainerConfig(lr=3e-3, weight_decay=0.0, epochs=15, batch_size=128))

    units, z = make_units(rng, 600, length, mix)
    pairs, labels, _ = labeled_pairs(rng, z, 2500)
    stats = trainer.fit(units, pairs, labels)
    assert isinstance(stats, FitStats) and stats.pairs == len(pairs)
    winners, losers = winners_losers(pairs, labels)
    assert np.isfinite(stats.loss) and trainer.accuracy(units, winners, losers) > 0.95

    # Fresh behaviours, fresh pairs: the model was trained on none of them.
    held_out, z_new = make_units(rng, 600, length, mix)
    new_pairs, new_labels, levels = labeled_pairs(rng, z_new, 3000)
    winners, losers = winners_losers(new_pairs, new_labels)
    assert trainer.accuracy(held_out, winners, losers) > 0.95
    # Not just the top level: pairs only the lower levels decide are ordered too.
    deep = torch.from_numpy(levels >= 1)
    assert deep.sum() > 300
    assert trainer.accuracy(held_out, winners[deep], losers[deep]) > 0.9
    # A reversed ordering is, correspondingly, almost always wrong.
    assert trainer.accuracy(held_out, losers, winners) < 0.05


def test_forward_and_unit_scores_shapes_and_padding():
    model = RewardModel(5, hidden=(8,), ensemble=3)
    x = torch.randn(7, 5)
    out = model(x)
    assert out.shape == (3, 7)
    # Members start from different initializations.
    assert not torch.allclose(out[0], out[1])
    index = torch.tensor([[0, 1, -1], [2, -1, -1], [3, 4, 5]])
    rows = torch.randn(6, 5)
    rows[0] = 1e3  # padding gathers row 0: it must count for unit 0 only
    units = Units(rows, index)
    scores = model.unit_scores(units, torch.tensor([2, 0, 1, 2]))
    assert scores.shape == (3, 4)
    steps = model(rows)
    expected = torch.stack([steps[:, 3:6].sum(1), steps[:, :2].sum(1), steps[:, 2], steps[:, 3:6].sum(1)], 1)
    torch.testing.assert_close(scores, expected)
    assert model(torch.zeros(0, 5)).shape == (3, 0)


def test_reward_is_the_normalized_ensemble_mean():
    model = RewardModel(4, hidden=(16, 16), ensemble=2)
    x = torch.randn(500, 4) * 3 + 1
    model.refresh_normalization(x)
    reward = model.score(x)
    assert reward.shape == (500,)
    assert abs(float(reward.mean())) < 1e-4
    assert float(reward.std()) == pytest.approx(1.0, abs=2e-3)  # either std convention
    raw = model(x).mean(0)
    torch.testing.assert_close(reward, (raw - raw.mean()) / raw.std(), rtol=2e-3, atol=2e-3)
    # Chunking does not change the result; other data gets the same affine map.
    torch.testing.assert_close(model.score(x, chunk=37), reward)
    y = torch.randn(20, 4)
    expected = (model(y).mean(0) - raw.mean()) / raw.std()
    torch.testing.assert_close(model.score(y), expected, rtol=2e-3, atol=2e-3)
    assert model.score(torch.zeros(0, 4)).shape == (0,)


@pytest.mark.parametrize(("offset", "scale"), [("mean", 0.1), ("high", 0.1), ("low", 3.0)])
def test_scale_sets_the_std_of_the_normalized_reward(offset, scale):
    model = RewardModel(4, hidden=(16,), offset=offset, scale=scale)
    x = torch.randn(2000, 4)
    model.refresh_normalization(x)
    reward = model.score(x)
    assert float(reward.std()) == pytest.approx(scale, rel=2e-3)
    unscaled = RewardModel(4, hidden=(16,), offset=offset)
    unscaled.load_state_dict(model.state_dict())
    torch.testing.assert_close(reward, unscaled.score(x) * scale)
    quantile = {"mean": None, "high": 0.99, "low": 0.01}[offset]
    if quantile is not None:  # the offset's quantile still maps to 0
        assert float(torch.quantile(reward, quantile)) == pytest.approx(0.0, abs=1e-5)


def test_refresh_normalization_after_training_and_without_normalize():
    model = RewardModel(2, hidden=(8,), normalize=False)
    x = torch.randn(100, 2)
    model.refresh_normalization(x)
    torch.testing.assert_close(model.score(x), model(x).mean(0))
    single = RewardModel(2, hidden=(8,))
    single.refresh_normalization(x[:1])
    assert torch.isfinite(single.score(x)).all()


def test_refresh_normalization_on_no_data_keeps_the_statistics():
    model = RewardModel(2, hidden=(8,))
    x = torch.randn(100, 2)
    model.refresh_normalization(x)
    before = model.score(x)
    model.refresh_normalization(torch.zeros(0, 2))
    torch.testing.assert_close(model.score(x), before)


def trained_model():
    rng = np.random.default_rng(3)
    model = RewardModel(3, hidden=(16, 8), ensemble=2)
    trainer = BradleyTerryTrainer(model, TrainerConfig(epochs=2, batch_size=64), seed=1)
    units, z = make_units(rng, 100, 2, np.eye(3))
    pairs, labels, _ = labeled_pairs(rng, z, 300)
    trainer.fit(units, pairs, labels)
    model.refresh_normalization(units.rows)
    return model, units.rows


def test_save_load_round_trip(tmp_path):
    model, rows = trained_model()
    assert float(model.out_std) != 1.0 and float(model.out_shift) != 0.0
    path = tmp_path / "reward_model.safetensors"
    model.save(path)

    raw = path.read_bytes()
    assert not raw.startswith(b"\x80") and not raw.startswith(b"PK")  # neither a pickle nor a torch zip
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])  # the safetensors layout: u64 length + JSON header
    assert "out_shift" in header and "out_std" in header
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    expected = {"input_dim": 3, "hidden": [16, 8], "ensemble": 2, "normalize": True, "offset": "mean", "scale": 1.0}
    assert config == expected

    loaded = RewardModel.load(path)
    assert isinstance(loaded, RewardModel) and loaded.config == model.config
    assert torch.equal(loaded.score(rows), model.score(rows))
    assert torch.equal(loaded(rows), model(rows))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_load_rejects_a_file_without_config(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ConfigError, match="not a heron reward model"):
        RewardModel.load(path)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input_dim": 3, "ensemble": 0}, "ensemble"),
        ({"input_dim": 3, "ensemble": -2}, "ensemble"),
        ({"input_dim": 0}, "input_dim"),
        ({"input_dim": 3, "offset": "median"}, "offset"),
        ({"input_dim": 3, "scale": 0.0}, "scale"),
        ({"input_dim": 3, "scale": float("nan")}, "scale"),
        ({"input_dim": 3, "scale": float("inf")}, "scale"),
    ],
)
def test_bad_model_arguments_are_config_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        RewardModel(**kwargs)


def test_fit_with_no_pairs_changes_nothing():
    model = RewardModel(2, hidden=(4,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = BradleyTerryTrainer(model, TrainerConfig())
    units = Units(torch.randn(5, 2), torch.arange(5)[:, None])
    stats = trainer.fit(units, torch.zeros((0, 2), dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert stats.pairs == 0 and np.isnan(stats.loss)
    # Pairs that are all unlabeled (0) teach nothing either.
    stats = trainer.fit(units, torch.tensor([[0, 1], [2, 3]]), torch.zeros(2, dtype=torch.long))
    assert stats.pairs == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_training_is_reproducible_and_label_sign_matters():
    rng = np.random.default_rng(5)
    units, z = make_units(rng, 80, 1, np.eye(3))
    pairs, labels, _ = labeled_pairs(rng, z, 400)

    def fit(sign):
        torch.manual_seed(0)
        model = RewardModel(3, hidden=(16,))
        trainer = BradleyTerryTrainer(model, TrainerConfig(lr=1e-2, epochs=5, batch_size=32), seed=0)
        stats = trainer.fit(units, pairs, sign * labels)
        return model, trainer, stats

    winners, losers = winners_losers(pairs, labels)
    first, first_trainer, stats = fit(1)
    second, _, _ = fit(1)
    assert torch.equal(first(units.rows), second(units.rows))
    assert first_trainer.accuracy(units, winners, losers) > stats.accuracy_before
    _, trainer, _ = fit(-1)
    # Trained on reversed labels, it learns the reverse order.
    assert trainer.accuracy(units, losers, winners) > 0.8 and trainer.accuracy(units, winners, losers) < 0.2


def test_grouped_pairs_learn_as_well_and_unlabeled_pairs_are_ignored():
    """Pairs drawn in unit-sharing groups (the default in training) still generalize; 0 labels are skipped."""
    rng = np.random.default_rng(11)
    units, z = make_units(rng, 2000, 1, np.eye(3))
    pairs = sample_pairs(len(z), 8192, rng, group=64, block=256)
    assert len(np.unique(pairs[:256])) <= 64
    labels = HIERARCHY.compare(z[pairs[:, 0]], z[pairs[:, 1]])
    assert (labels == 0).any()
    model = RewardModel(3, hidden=(64, 64))
    trainer = BradleyTerryTrainer(model, TrainerConfig(lr=3e-3, weight_decay=0.0, epochs=8, batch_size=256))
    stats = trainer.fit(units, torch.from_numpy(pairs), torch.from_numpy(labels.astype(np.int64)))
    assert stats.pairs == int((labels != 0).sum())
    held_out, z_new = make_units(rng, 600, 1, np.eye(3))
    new_pairs, new_labels, _ = labeled_pairs(rng, z_new, 3000)
    assert trainer.accuracy(held_out, *winners_losers(new_pairs, new_labels)) > 0.95


@pytest.mark.parametrize(("ensemble", "length", "hidden"), [(1, 1, (16, 16)), (3, 4, (8,)), (2, 3, (8, 6, 4))])
def test_written_out_gradients_equal_autograd(ensemble, length, hidden):
    """The trainer's hand-written backward pass gives autograd's loss and gradients: ensembles,
    padded segments, unlabeled pairs (weight 0) and any depth."""
    rng = np.random.default_rng(ensemble + length)
    units, _ = make_units(rng, 12, length, np.eye(3))
    model = RewardModel(3, hidden=hidden, ensemble=ensemble)
    trainer = BradleyTerryTrainer(model, TrainerConfig())
    where = torch.from_numpy(rng.integers(0, 12, (2, 40)))
    weight = torch.from_numpy((rng.random(40) < 0.8).astype(np.float32))
    n = float(weight.sum())
    mask = units.index >= 0
    rows = units.rows[units.index.clamp_min(0).reshape(-1)]

    loss = trainer.loss_and_gradients(rows, mask, where, weight, n)
    written = [p.grad.clone() for p in model.parameters()]

    model.zero_grad(set_to_none=True)
    scores = torch.where(mask, model(rows).reshape(ensemble, *mask.shape), 0.0).sum(-1)
    margin = scores[:, where[0]] - scores[:, where[1]]
    reference = -(torch.nn.functional.logsigmoid(margin) * weight).sum(-1).mean() / n
    reference.backward()
    torch.testing.assert_close(loss, reference.detach())
    for got, expected in zip(written, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("offset", "share_positive"), [("mean", None), ("low", 0.99), ("high", 0.01)])
def test_offset_sets_where_the_reward_is_zero(offset, share_positive):
    """Unit std always; zero at the mean, or so that 99% of steps earn (low) or pay (high)."""
    model = RewardModel(2, hidden=(8,), offset=offset)
    x = torch.randn(20_000, 2)
    model.refresh_normalization(x)
    reward = model.score(x)
    assert float(reward.std()) == pytest.approx(1.0, rel=1e-3)
    if share_positive is None:
        assert abs(float(reward.mean())) < 1e-4
    else:
        assert float((reward > 0).float().mean()) == pytest.approx(share_positive, abs=2e-3)
