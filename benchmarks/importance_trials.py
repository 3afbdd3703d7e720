"""How many completed trials fANOVA (Optuna's default importance) needs to name the one knob that
drives the objective: the rule behind core.arms.importance_min_trials.

Synthetic studies: every knob uniform on [0, 1], objective = the first knob + Gaussian noise.
Prints, per (trials, knobs, noise SD), how often the driving knob ranks first over `--reps` studies.
    python benchmarks/importance_trials.py --reps 20
"""

import argparse
import warnings

import numpy as np
import optuna


def study_with(n: int, knobs: int, seed: int, noise: float) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    names = [f"k{i}" for i in range(knobs)]
    dists = {k: optuna.distributions.FloatDistribution(0.0, 1.0) for k in names}
    rng = np.random.default_rng(seed)
    for _ in range(n):
        values = {k: float(rng.random()) for k in names}
        study.add_trial(optuna.trial.create_trial(params=values, distributions=dists,
                                                  value=values["k0"] + noise * rng.normal()))
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print("trials knobs noise  driver ranked first")
    for knobs in (2, 4):
        for n in (5 * knobs, 10 * knobs):
            for noise in (0.0, 0.15):
                hits = 0
                for seed in range(args.reps):
                    imp = optuna.importance.get_param_importances(study_with(n, knobs, seed, noise))
                    hits += max(imp, key=imp.get) == "k0"
                print(f"{n:6d} {knobs:5d} {noise:5.2f}  {hits}/{args.reps}")


if __name__ == "__main__":
    main()
