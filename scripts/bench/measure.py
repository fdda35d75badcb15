#!/usr/bin/env python3
"""Run one benchmark step and record wall time, CPU time and peak RSS (standard library only).

    measure.py run --label NAME --results FILE [--stdout F] [--stderr F] [--max-rss-gib G]
                   [--outcome reconcile|duckdb|none] -- COMMAND ...
    measure.py table --results FILE [--labels a,b,...]

`run` appends one JSON object per step to FILE: label, command, wall_s, cpu_s (user + sys of the command and
its children, from wait4), user_s, sys_s, peak_rss_gib (ru_maxrss, exact, not sampled), exit code or signal,
and an outcome parsed from the command's JSON stdout. It polls the command's resident memory every 0.1 s and
kills it (SIGKILL) when it exceeds --max-rss-gib or when the machine's MemAvailable drops below
--min-available-gib, so an unbounded command fails on its own instead of taking the shared machine down; the
record then says so (`killed`). `table` prints the records as a fixed-width table (latest record per label).
"""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time

GIB = 1 << 30


def rss_bytes(pid):
    """Resident memory of `pid` and its descendants (sampled from /proc), 0 when gone."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def outcome_reconcile(doc):
    v = doc.get("verdicts", {})
    causes = doc.get("causes", {})
    return {
        "checked": doc.get("checked"),
        "differences": doc.get("differences"),
        "missing": v.get("missing_in_serving", 0),
        "unexpected": v.get("unexpected_in_serving", 0),
        "drift": v.get("value_drift", 0),
        "corrections": doc.get("corrections"),
        "corrections_applied": doc.get("corrections_applied"),
        "unexplained": causes.get("unexplained", 0),
        "not_final": doc.get("skipped_not_final", 0),
        "causes": causes,
        "applied": doc.get("applied"),
    }


def outcome_text(kind, o):
    if not o:
        return ""
    if kind == "reconcile":
        return (
            f"checked {o['checked']}, differences {o['differences']} (missing {o['missing']}, unexpected "
            f"{o['unexpected']}, drift {o['drift']}), corrections {o['corrections']}, unexplained {o['unexplained']}"
        )
    if kind == "duckdb":
        return (
            f"checked {o['checked']}, differences {o['differences']} (missing {o['missing_in_serving']}, "
            f"unexpected {o['unexpected_in_serving']}, drift {o['value_drift']}), ok {o['ok']}; "
            f"keys {o['keys_differing']}/{o['keys']}"
        )
    return ""


def run(args):
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        sys.exit("measure.py run: no command")
    out = open(args.stdout, "wb") if args.stdout else None
    err = open(args.stderr, "wb") if args.stderr else None
    cap = args.max_rss_gib * GIB if args.max_rss_gib else None
    floor = args.min_available_gib * GIB if args.min_available_gib else None
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    killed, sampled_peak = None, 0
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss = rss_bytes(proc.pid)
        sampled_peak = max(sampled_peak, rss)
        if killed is None and cap and rss > cap:
            killed = f"RSS {rss / GIB:.1f} GiB over the cap of {args.max_rss_gib:g} GiB"
        avail = mem_available()
        if killed is None and floor and avail is not None and avail < floor:
            killed = f"machine MemAvailable {avail / GIB:.1f} GiB under {args.min_available_gib:g} GiB (RSS {rss / GIB:.1f} GiB)"
        if killed is not None:
            killed += f" after {time.monotonic() - start:.1f} s: killed"
            os.kill(proc.pid, signal.SIGKILL)
            pid, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.1)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    for f in (out, err):
        if f:
            f.close()
    rec = {
        "label": args.label,
        "command": " ".join(shlex.quote(c) for c in cmd),
        "wall_s": round(wall, 2),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "user_s": round(ru.ru_utime, 2),
        "sys_s": round(ru.ru_stime, 2),
        "peak_rss_gib": round(ru.ru_maxrss * 1024 / GIB, 3),
        "exit": proc.returncode,
        "killed": killed,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if args.outcome != "none" and args.stdout and proc.returncode == 0:
        try:
            with open(args.stdout) as f:
                doc = json.load(f)
            rec["outcome"] = outcome_reconcile(doc) if args.outcome == "reconcile" else doc.get("counts", doc)
            rec["outcome_kind"] = args.outcome
        except (OSError, ValueError) as e:
            rec["outcome_error"] = str(e)
    with open(args.results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    status_text = "ok" if proc.returncode == 0 else (killed or f"exit {proc.returncode}")
    print(f"  {args.label}: {wall:.1f} s wall, {rec['cpu_s']:.1f} s CPU, {rec['peak_rss_gib']:.2f} GiB peak RSS ({status_text})",
          file=sys.stderr)
    return 0 if proc.returncode == 0 else 1


def table(args):
    latest = {}
    try:
        with open(args.results) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    latest[r["label"]] = r
    except FileNotFoundError:
        sys.exit(f"no results in {args.results}")
    labels = args.labels.split(",") if args.labels else list(latest)
    print(f"{'step':<14} {'wall s':>8} {'CPU s':>8} {'RSS GiB':>8}  {'status':<8} outcome")
    for label in labels:
        r = latest.get(label)
        if r is None:
            continue
        if r.get("killed"):
            status = "KILLED"
        elif r["exit"] == 0:
            status = "ok"
        elif r["exit"] < 0:
            status = f"signal {-r['exit']}"
        else:
            status = f"exit {r['exit']}"
        text = outcome_text(r.get("outcome_kind"), r.get("outcome")) or (r.get("killed") or "")
        print(f"{label:<14} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {r['peak_rss_gib']:>8.2f}  {status:<8} {text}")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--label", required=True)
    r.add_argument("--results", required=True)
    r.add_argument("--stdout")
    r.add_argument("--stderr")
    r.add_argument("--max-rss-gib", type=float, default=None)
    r.add_argument("--min-available-gib", type=float, default=1.0)
    r.add_argument("--outcome", choices=["reconcile", "duckdb", "none"], default="none")
    r.add_argument("command", nargs=argparse.REMAINDER)
    t = sub.add_parser("table")
    t.add_argument("--results", required=True)
    t.add_argument("--labels")
    args = p.parse_args()
    sys.exit(run(args) if args.what == "run" else table(args))


if __name__ == "__main__":
    main()
