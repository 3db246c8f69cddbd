"""`metarun-compare RUN_A RUN_B`: is A better than B, measured on the same test episodes?

    metarun-compare outputs/.../run_a outputs/.../run_b
    metarun-compare SWEEP_A SWEEP_B --out compare/      # several splits or seeds per side

Every run tests on episodes that depend only on `eval.seed` and the episode index, and writes what it
was asked and answered per episode (`episodes/*.jsonl`, tracking/folder/episodes.py). Two runs tested on
identical episodes are compared episode by episode: the paired difference of accuracy (A - B, in
points) with a 95% CI from a paired bootstrap over episodes, a two-sided sign-flip permutation test of
"no difference", and the share of episodes each side wins. A pair whose episodes differ is refused,
naming the settings that make them differ.

With sweeps, runs pair up by their episodes and training profile (one class split is one set of
episodes; `data.train_per_class` profiles are separate rows; several seeds of one side on the same
split and profile are averaged episode by episode first). Each split gets its own row, and
the summary row is the mean over splits of the paired difference with its standard deviation over
splits and an exact sign-flip test over the split means, the way papers report a difference over
class splits. Tables print to the terminal; `--out DIR` also writes compare.md, compare.csv and
compare.tex.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from metarun.errors import MetarunError, tool_main
from metarun.tracking.folder import episodes
from metarun.tracking.folder.run_dir import (
    ADDED_LATER,
    CONFIG,
    RESULTS,
    config_diff,
    describe,
    flatten,
    ignored,
    renamed,
)
from metarun.tracking.tables.results import run_regime


class CompareError(MetarunError):
    pass


def paired(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = 10_000) -> dict:
    """Per-episode accuracies of A and B on the same episodes -> the mean difference (A - B), its 95%
    bootstrap CI (episodes resampled with replacement, percentiles), the sign-flip p-value (two-sided,
    with the +1 correction, so a run against itself gives p = 1) and the wins, ties and losses of A."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n, mean = len(d), float(d.mean())
    rng = np.random.default_rng(seed)
    boots, extreme = [], 0
    for start in range(0, resamples, 1000):  # in blocks: (1000, n) at a time
        size = min(1000, resamples - start)
        boots.append(d[rng.integers(0, n, size=(size, n))].mean(1))
        flips = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
        extreme += int(np.sum(np.abs((flips * d).mean(1)) >= abs(mean) - 1e-9))
    low, high = np.percentile(np.concatenate(boots), [2.5, 97.5])
    return {"diff": mean, "ci_low": float(low), "ci_high": float(high), "p": (extreme + 1) / (resamples + 1),
            "wins": int(np.sum(d > 0)), "ties": int(np.sum(d == 0)), "losses": int(np.sum(d < 0)),
            "a": float(np.mean(a)), "b": float(np.mean(b)), "episodes": n}


def sign_flip_exact(diffs: np.ndarray) -> float:
    """Two-sided p of "no difference" for a few per-split mean differences: every sign pattern."""
    diffs = np.asarray(diffs, dtype=np.float64)
    observed = abs(diffs.mean())
    means = [abs((np.array(signs) * diffs).mean()) for signs in itertools.product((-1.0, 1.0), repeat=len(diffs))]
    return float(np.mean(np.array(means) >= observed - 1e-9))


@dataclass
class Run:
    folder: Path
    config: dict
    records: dict[str, list[dict]]
    regime: str = ""  # the information regime results.json records (class names, test utterances read)

    def label(self, keys: Sequence[str] = ()) -> str:
        """The row label: the data, its class split and profile, and the values of `keys` (settings in
        which the runs of one side differ other than their seed: sweep jobs that are not repeats)."""
        data = self.config.get("data", {})
        parts = [str(data.get("name", "?"))]
        if data.get("split") is not None:
            parts.append(f"split {data['split']}")
        if data.get("train_per_class") is not None:
            parts.append(f"{data['train_per_class']} per class")
        flat = flatten(renamed(self.config))
        return ", ".join(parts + [f"{k}={flat.get(k)}" for k in keys])


LABELLED = ("seed", "data.name", "data.split", "data.train_per_class")  # seeds pool; the others are in every label


def varying(runs: list[Run]) -> list[str]:
    """Config keys in which the runs of one side differ, other than the seed and what every label shows:
    a sweep over `sampler.k_shot` holds different experiments, not repeats of one."""
    flat = [ADDED_LATER | flatten(renamed(r.config)) for r in runs]
    keys = {k for f in flat for k in f}
    return sorted(k for k in keys if not ignored(k) and k not in LABELLED and len({repr(f.get(k)) for f in flat}) > 1)


@dataclass
class Group:
    """One set of episodes (a class split) of one setting, with the runs of each side tested on it."""

    setting: str
    label: str
    a: list[np.ndarray] = field(default_factory=list)
    b: list[np.ndarray] = field(default_factory=list)


def load(path: str | Path) -> list[Run]:
    """The finished runs in a run folder or under a sweep folder, each with its per-episode records."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{path} does not exist; give a run folder or a sweep folder.")
    files = [path / RESULTS] if (path / RESULTS).is_file() else sorted(path.rglob(RESULTS))
    if not files:
        raise CompareError(f"{path} holds no results.json: it is not a finished run or a sweep of finished runs.")
    runs = []
    for file in files:
        folder = file.parent
        records = episodes.read(folder)
        if not records:
            raise CompareError(f"{folder} has no per-episode records (episodes/*.jsonl): it was made before runs "
                               f"wrote them. Test it again with `metarun-eval {folder}` and compare the new folder.")
        saved = folder / CONFIG
        try:
            config = yaml.safe_load(saved.read_text()) or {} if saved.is_file() else {}
        except yaml.YAMLError as e:
            raise CompareError(f"{saved} is not valid YAML ({str(e).splitlines()[0]}): the run's saved config is "
                               f"damaged.") from None
        results = json.loads(file.read_text())
        episodes.check_against_results(folder, records, results.get("results", {}))
        regime = run_regime(results | {"config": config})
        runs.append(Run(folder, config, records, regime))
    return runs


def pair(runs_a: list[Run], runs_b: list[Run]) -> list[Group]:
    """Groups of identical episodes, per setting both sides tested; refuses when none pair up."""
    shared = sorted({s for r in runs_a for s in r.records} & {s for r in runs_b for s in r.records})
    if not shared:
        raise CompareError(f"the runs share no test setting: A has {_settings(runs_a)}, B has {_settings(runs_b)}.")
    keys = sorted(set(varying(runs_a)) | set(varying(runs_b)))  # jobs that differ in these never pool
    groups: dict[tuple[str, str], Group] = {}
    for side, runs in (("a", runs_a), ("b", runs_b)):
        for run in runs:
            for setting in shared:
                if setting not in run.records:
                    continue
                lines = run.records[setting]
                # one group per set of episodes and training profile: runs of one split with 10 or all
                # training examples per class answer the same episodes but are different rows
                key = (setting, run.label(keys), episodes.fingerprint(lines))
                group = groups.setdefault(key, Group(setting, run.label(keys)))
                getattr(group, side).append(episodes.accuracies(lines))
    both = [g for g in groups.values() if g.a and g.b]
    alone = sorted({f"{'A' if g.a else 'B'}: {g.label}" for g in groups.values() if not (g.a and g.b)})
    if both and alone:
        print(f"metarun-compare: no partner on the other side for {'; '.join(alone)}", file=sys.stderr)
    if not both:
        raise CompareError(f"A and B were not tested on the same episodes, so they cannot be compared episode by "
                           f"episode: {_what_differs(runs_a[0], runs_b[0])}. Test one of them again with the other's "
                           f"protocol (metarun-eval RUN eval.seed=... eval.test....).")
    return sorted(both, key=lambda g: (g.setting, _natural(g.label)))


def regimes(runs: list[Run]) -> str:
    """The information regimes of one side's runs, as the comparison's header names them."""
    return "; ".join(sorted({r.regime for r in runs}))


def _settings(runs: list[Run]) -> str:
    return ", ".join(sorted({s for r in runs for s in r.records})) or "none"


def _what_differs(a: Run, b: Run) -> str:
    diff = {k: v for k, v in config_diff(a.config, b.config).items()
            if k.startswith(("eval.seed", "eval.test.", "data.")) and not k.startswith("data._target_")}
    if diff:
        return describe(diff).replace(" there,", " in A,")
    return "their configs agree on data and evaluation, but the episode records differ (another metarun version?)"


def _natural(label: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in label.replace(",", " ").split())


def compare(runs_a: list[Run], runs_b: list[Run], seed: int = 0, resamples: int = 10_000) -> list[dict]:
    """Table rows: one per setting and split, and a summary row per setting over several splits."""
    rows = []
    groups = pair(runs_a, runs_b)
    for setting in dict.fromkeys(g.setting for g in groups):
        mine = [g for g in groups if g.setting == setting]
        for g in mine:
            a, b = np.mean(g.a, axis=0), np.mean(g.b, axis=0)  # several seeds: averaged episode by episode
            rows.append({"setting": setting, "split": g.label, "runs": f"{len(g.a)}/{len(g.b)}",
                         **paired(a, b, seed, resamples)})
        if len(mine) > 1:
            split_rows = rows[-len(mine):]
            diffs = np.array([r["diff"] for r in split_rows])
            rows.append({"setting": setting, "split": f"mean over {len(mine)} splits",
                         "runs": f"{sum(len(g.a) for g in mine)}/{sum(len(g.b) for g in mine)}",
                         "diff": float(diffs.mean()), "sd": float(diffs.std(ddof=1)), "p": sign_flip_exact(diffs),
                         "split_wins": int(np.sum(diffs > 0)), "splits": len(mine),
                         "a": float(np.mean([r["a"] for r in split_rows])),
                         "b": float(np.mean([r["b"] for r in split_rows])),
                         "episodes": sum(r["episodes"] for r in split_rows)})
    return rows


HEADER = ["setting", "split", "runs A/B", "A", "B", "A - B [95% CI]", "p", "A wins / ties / B wins", "episodes"]


def _cells(row: dict) -> list[str]:
    if "sd" in row:  # a summary over splits
        diff = f"{row['diff']:+.2f} (sd {row['sd']:.2f} over splits)"
        wins = f"{row['split_wins']} of {row['splits']} splits"
    else:
        diff = f"{row['diff']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]"
        wins = f"{row['wins']} / {row['ties']} / {row['losses']}"
    return [row["setting"], row["split"], row["runs"], f"{row['a']:.2f}", f"{row['b']:.2f}", diff,
            f"{row['p']:.4f}", wins, str(row["episodes"])]


def render(rows: list[dict], fmt: str = "md") -> str:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        keys = ["setting", "split", "runs", "a", "b", "diff", "ci_low", "ci_high", "sd", "p", "wins", "ties",
                "losses", "split_wins", "splits", "episodes"]
        writer.writerow(keys)
        for row in rows:
            writer.writerow([f"{row[k]:.4f}" if isinstance(row.get(k), float) else row.get(k, "") for k in keys])
        return out.getvalue()
    if fmt == "tex":
        esc = lambda s: s.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
        lines = [r"\begin{tabular}{ll" + "c" * (len(HEADER) - 2) + "}", r"\toprule",
                 " & ".join(esc(h) for h in HEADER) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in _cells(r)) + r" \\" for r in rows]
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"]) + "\n"
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n" + LEGEND


LEGEND = ("\nA - B: mean paired difference of accuracy (points) over the same episodes, 95% CI from a paired "
          "bootstrap; p: two-sided sign-flip permutation test (over episodes; over split means in a summary row).\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metarun-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", help="run folder or sweep folder of method A")
    parser.add_argument("run_b", help="run folder or sweep folder of method B")
    parser.add_argument("--out", help="folder for compare.md / .csv / .tex")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and permutation draws (default 0)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap and permutation draws (10000)")
    args = parser.parse_args(argv)
    return tool_main("metarun-compare", lambda: run(args))


def run(args: argparse.Namespace) -> None:
    if args.resamples < 100:
        raise CompareError(f"--resamples={args.resamples} is too few for a 95% interval; use at least 100.")
    runs_a, runs_b = load(args.run_a), load(args.run_b)
    rows = compare(runs_a, runs_b, args.seed, args.resamples)
    md = render(rows, "md")
    print(f"A: {args.run_a} ({regimes(runs_a)})\nB: {args.run_b} ({regimes(runs_b)})\n\n{md}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for fmt, name in (("md", "compare.md"), ("csv", "compare.csv"), ("tex", "compare.tex")):
            (out / name).write_text(render(rows, fmt))

if __name__ == "__main__":
    sys.exit(main())
