"""One run of imitation's preference comparisons on Pendulum-v1; executed by the imitation venv's Python.

Not for direct use: ``benchmarks/imitation_peer.py`` creates the venv (imitation 1.0.1, gymnasium 0.29,
stable-baselines3 2.2, torch 2.13.0 CPU) and runs this file in it. It must not import heron. Writes
one JSON object to ``--out``; the protocol is described in ``imitation_peer.py``'s docstring.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import gymnasium as gym
import imitation
import numpy as np
import stable_baselines3
import torch
import torch._dynamo  # torch imports it on the first optimizer (~1 s): an import, kept out of the timings
from imitation.algorithms import preference_comparisons
from imitation.rewards.reward_nets import BasicRewardNet, NormalizedRewardNet
from imitation.util import logger as imit_logger
from imitation.util.networks import RunningNorm
from imitation.util.util import make_vec_env
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnvWrapper


class StepCounter(VecEnvWrapper):
    """Counts every env step taken on the training env (agent training and fragment sampling)."""

    def __init__(self, venv):
        super().__init__(venv)
        self.steps = 0

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        out = self.venv.step_wait()
        self.steps += self.venv.num_envs
        return out


def evaluate(model: PPO, episodes: int, seed: int) -> list[float]:
    """Ground-truth return of ``episodes`` deterministic episodes (heron's protocol)."""
    env = gym.make("Pendulum-v1")
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, ret = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            ret += float(reward)
            done = terminated or truncated
        returns.append(ret)
    env.close()
    return returns


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--iterations", type=int, required=True, help="PreferenceComparisons num_iterations")
    parser.add_argument("--steps-per-iteration", type=int, required=True, help="multiple of n_steps")
    parser.add_argument("--comparisons", type=int, default=200)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--ppo-kwargs", required=True, help="JSON: heron's PPO defaults for heron/Pendulum-v1")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    venv = StepCounter(make_vec_env("Pendulum-v1", rng=rng, n_envs=1))

    # imitation's own default reward net (scripts/ingredients/reward.py): BasicRewardNet with a
    # RunningNorm input layer, wrapped in NormalizedRewardNet (RunningNorm on the output).
    reward_net = NormalizedRewardNet(
        BasicRewardNet(venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm),
        normalize_output_layer=RunningNorm,
    )
    # The rest follows docs/tutorials/5_train_preference_comparisons.ipynb (imitation 1.0).
    fragmenter = preference_comparisons.RandomFragmenter(warning_threshold=0, rng=rng)
    gatherer = preference_comparisons.SyntheticGatherer(rng=rng)
    preference_model = preference_comparisons.PreferenceModel(reward_net)
    reward_trainer = preference_comparisons.BasicRewardTrainer(
        preference_model=preference_model,
        loss=preference_comparisons.CrossEntropyRewardLoss(),
        epochs=3,
        rng=rng,
    )
    ppo_kwargs = json.loads(args.ppo_kwargs)
    agent = PPO("MlpPolicy", venv, seed=args.seed, device="cpu", verbose=0, **ppo_kwargs)
    trajectory_generator = preference_comparisons.AgentTrainer(
        algorithm=agent,
        reward_fn=reward_net,
        venv=venv,
        exploration_frac=0.05,
        rng=rng,
    )
    with tempfile.TemporaryDirectory(prefix="imitation-log-") as log_dir:
        pref_comparisons = preference_comparisons.PreferenceComparisons(
            trajectory_generator,
            reward_net,
            num_iterations=args.iterations,
            fragmenter=fragmenter,
            preference_gatherer=gatherer,
            reward_trainer=reward_trainer,
            fragment_length=100,
            transition_oversampling=1,
            initial_comparison_frac=0.1,
            allow_variable_horizon=False,
            initial_epoch_multiplier=4,
            query_schedule="hyperbolic",
            custom_logger=imit_logger.configure(log_dir, ["stdout"]),
        )
        # PreferenceComparisons.train runs num_iterations + 1 rounds, each training the agent for
        # total_timesteps // num_iterations steps (SB3 rounds each up to whole rollouts).
        stats = pref_comparisons.train(
            total_timesteps=args.iterations * args.steps_per_iteration,
            total_comparisons=args.comparisons,
        )
    train_s = time.perf_counter() - start

    eval_start = time.perf_counter()
    returns = evaluate(agent, args.eval_episodes, seed=args.seed + 10_000)
    eval_s = time.perf_counter() - eval_start

    result = {
        "seed": args.seed,
        "train_s": train_s,
        "eval_s": eval_s,
        "wall_clock_s": train_s + eval_s,
        "final_return": float(np.mean(returns)),
        "returns": returns,
        "agent_steps": int(agent.num_timesteps),
        "env_steps": int(venv.steps),
        "comparisons": len(pref_comparisons.dataset),
        "iterations": args.iterations,
        "ppo_kwargs": ppo_kwargs,
        "ppo_n_epochs": int(agent.n_epochs),
        "reward_accuracy": float(stats["reward_accuracy"]),
        "versions": {
            "python": platform.python_version(),
            "imitation": imitation.__version__,
            "stable_baselines3": stable_baselines3.__version__,
            "gymnasium": gym.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
