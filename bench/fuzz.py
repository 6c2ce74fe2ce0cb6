"""Coverage-guided fuzzing (atheris/libFuzzer) of every parser of untrusted input.

    python bench/fuzz.py [--target NAME ...] [--runs N | --seconds S]

Each target (bench/fuzz_targets/) runs in a subprocess of its own, since atheris runs in-process and
ends it with sys.exit; one target at a time, so the machine's other work is not starved. A crash
ends that subprocess; the runner records it and starts the target again, told to ignore crashes
already seen (same exception type and place), so one crash does not hide the next. Every new crash
input is saved to tests/data/fuzz_crashes/<target>/, where tests/unit/test_fuzz_regressions.py
replays it. Prints per target: executions, exec/s, distinct crashes, coverage (edges, features).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CRASHES = ROOT / "tests" / "data" / "fuzz_crashes"
MAX_RESTARTS = 20  # distinct crashes per target before giving up on it
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+)", re.M)
_FINAL = re.compile(r"^stat::(number_of_executed_units|average_exec_per_sec):\s*(\d+)", re.M)


@dataclass
class Result:
    target: str
    executions: int = 0
    seconds: float = 0.0
    edges: int = 0
    features: int = 0
    crashes: list[dict[str, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


# ----------------------------------------------------------------------------------------- child


def _signature(exc: BaseException) -> str:
    """Exception type and the innermost frame in the project: how crashes are told apart."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if f.filename.startswith(str(ROOT)) and "/bench/" not in f.filename] or frames
    last = own[-1]
    path = Path(last.filename)
    where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{last.lineno}"
    return f"{type(exc).__name__} at {where}"


def _child(name: str, libfuzzer_args: list[str]) -> None:
    import atheris  # only the fuzzing run needs it

    sys.path.insert(0, str(ROOT))
    from bench.fuzz_targets import TARGETS, load, run_one

    with atheris.instrument_imports(include=list(TARGETS[name].instrument)):
        module = load(name)
    known = set(json.loads(os.environ.get("EDGED_FUZZ_KNOWN", "[]")))
    report = Path(os.environ["EDGED_FUZZ_REPORT"])

    def one_input(data: bytes) -> None:
        try:
            run_one(module, data)
        except Exception as exc:
            sig = _signature(exc)
            if sig in known:
                return
            report.write_text(json.dumps({"signature": sig, "error": f"{type(exc).__name__}: {exc}"[:500]}))
            raise

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


# ----------------------------------------------------------------------------------------- runner


def _run_target(name: str, runs: int | None, seconds: float | None, save: bool) -> Result:
    from bench.fuzz_targets import TARGETS, load, seeds

    res = Result(name)
    known: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"edged-fuzz-{name}-") as tmp:
        corpus, artifacts = Path(tmp) / "corpus", Path(tmp) / "artifacts"
        corpus.mkdir()
        artifacts.mkdir()
        for data in seeds(load(name)):
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
        for _ in range(MAX_RESTARTS):
            left_runs = None if runs is None else runs - res.executions
            left_s = None if seconds is None else seconds - res.seconds
            if (left_runs is not None and left_runs <= 0) or (left_s is not None and left_s < 1):
                break
            budget = f"-runs={left_runs}" if left_runs is not None else f"-max_total_time={int(left_s or 1)}"
            report = Path(tmp) / "report.json"
            report.unlink(missing_ok=True)
            args = [budget, f"-artifact_prefix={artifacts}/", "-print_final_stats=1", "-timeout=10",
                    "-rss_limit_mb=2048", f"-max_len={TARGETS[name].max_len}", "-print_pcs=0", str(corpus)]  # fmt: skip
            env = {**os.environ, "EDGED_FUZZ_KNOWN": json.dumps(known), "EDGED_FUZZ_REPORT": str(report),
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
            t0 = time.monotonic()
            proc = subprocess.run(
                [sys.executable, __file__, "--child", name, "--", *args],
                env=env, capture_output=True, text=True, errors="replace", check=False,
            )  # fmt: skip
            res.seconds += time.monotonic() - t0
            out = proc.stderr + proc.stdout
            final = dict(_FINAL.findall(out))
            status = _STATUS.findall(out)
            if "number_of_executed_units" in final:
                res.executions += int(final["number_of_executed_units"])
            elif status:
                res.executions += int(status[-1][0])
            if status:
                res.edges, res.features = max(res.edges, int(status[-1][1])), max(res.features, int(status[-1][2]))
            if proc.returncode == 0:
                continue  # the budget is spent, or a short run asked for more than the corpus gave
            crash = json.loads(report.read_text()) if report.exists() else {"signature": f"exit {proc.returncode}"}
            found = sorted(artifacts.iterdir(), key=lambda p: p.stat().st_mtime)
            if found:
                data = found[-1].read_bytes()
                crash["input"] = found[-1].name
                if save:
                    dest = CRASHES / name / f"crash-{hashlib.sha1(data).hexdigest()[:16]}"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(data)
                    crash["saved"] = str(dest.relative_to(ROOT))
                for f in found:
                    f.unlink()
            else:
                crash["output"] = out[-2000:]
            res.crashes.append(crash)
            print(f"  {name}: crash {crash['signature']}: {crash.get('error', '')[:200]}", flush=True)
            if crash["signature"] in known or not crash["signature"][0].isupper():
                break  # not an exception we can skip (a timeout, out of memory): stop this target
            known.append(crash["signature"])
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[3:])
        return 0
    sys.path.insert(0, str(ROOT))
    from bench.fuzz_targets import TARGETS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", choices=TARGETS, help="repeatable; default: every target")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--runs", type=int, help="executions per target (default 100000)")
    budget.add_argument("--seconds", type=float, help="time per target")
    ap.add_argument("--no-save", action="store_true", help="do not write crash inputs to tests/data/fuzz_crashes")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    runs = a.runs if a.runs is not None or a.seconds is not None else 100_000
    results = []
    for name in a.target or TARGETS:
        print(f"fuzzing {name} ...", flush=True)
        results.append(_run_target(name, runs, a.seconds, save=not a.no_save))
    print(f"\n{'target':<20}{'executions':>12}{'exec/s':>9}{'crashes':>9}{'edges':>7}{'features':>10}")
    for r in results:
        print(f"{r.target:<20}{r.executions:>12}{r.rate:>9.0f}{len(r.crashes):>9}{r.edges:>7}{r.features:>10}")
        for c in r.crashes:
            print(f"    {c['signature']}  {c.get('saved', c.get('input', ''))}")
    if a.json:
        a.json.write_text(json.dumps([{**r.__dict__, "rate": r.rate} for r in results], indent=2))
    return 1 if any(r.crashes for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
