#!/usr/bin/env python3
"""pymoo's NSGA-II against `secateur moo-bench` on ZDT1-3 and DTLZ2, in one command.

10,000 evaluations, population 40, 10 seeds, hypervolume at reference point 1.1 per objective
(of the final population, both sides). Prints a JSON line per problem with the mean hypervolume
and mean seconds of each side and their ratios.

Pinned: pymoo==0.6.1.*. Run from the repository root after `cargo build --release -p secateur-cli`:
`python3 scripts/bench_pymoo.py [path/to/secateur]`.
"""

import json
import subprocess
import sys
import time

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.indicators.hv import HV
from pymoo.optimize import minimize
from pymoo.problems import get_problem

SEEDS = range(10)
PROBLEMS = {"zdt1": ("zdt1", {}), "zdt2": ("zdt2", {}), "zdt3": ("zdt3", {}),
            "dtlz2": ("dtlz2", {"n_var": 12, "n_obj": 3})}


def pymoo_run(name, seed):
    pname, kw = PROBLEMS[name]
    problem = get_problem(pname, **kw)
    t0 = time.perf_counter()
    res = minimize(problem, NSGA2(pop_size=40), ("n_eval", 10000), seed=seed, verbose=False)
    seconds = time.perf_counter() - t0
    hv = HV(ref_point=np.full(problem.n_obj, 1.1))(res.pop.get("F"))
    return hv, seconds


def secateur_run(binary, name, seed):
    out = subprocess.run([binary, "moo-bench", "--problem", name, "--algo", "nsga2", "--evals", "10000",
                          "--pop", "40", "--seed", str(seed)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    return r["hypervolume"], r["seconds"]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/secateur"
    for name in PROBLEMS:
        p = [pymoo_run(name, s) for s in SEEDS]
        s = [secateur_run(binary, name, s) for s in SEEDS]
        mean = lambda xs, i: float(np.mean([x[i] for x in xs]))
        print(json.dumps({
            "problem": name,
            "pymoo_hv": round(mean(p, 0), 4), "secateur_hv": round(mean(s, 0), 4),
            "pymoo_s": round(mean(p, 1), 4), "secateur_s": round(mean(s, 1), 4),
            "speedup": round(mean(p, 1) / mean(s, 1), 1),
        }))


if __name__ == "__main__":
    main()
