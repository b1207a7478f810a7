"""The results store of ablation grids (gradsurg.train.store) and the grid around it.

Issue 12 items 2, 3 and 10 (results.jsonl torn, garbled or duplicated; two
processes on one folder; Ctrl-C). No model is trained here: ``trainer.train``
is replaced by a stub that returns a fixed result, so each test takes
milliseconds; the real training path is covered by tests/test_train.py.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import time

import pytest

from gradsurg.train import TrainConfig
from gradsurg.train import grid, report
from gradsurg.train.store import RESULTS, SET_ASIDE, ResultsStore, StoreBusy, StoreError, parse, read_results


def _row(key: str, **kw) -> dict:
    row = {"key": key, "status": "ok", "config": {"loss": "info_nce", "seed": 1}, "spearman": 80.0, "pearson": 79.0}
    row.update(kw)
    return row


def _write(folder, *lines: str, newline_at_end: bool = True) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, RESULTS)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + ("\n" if newline_at_end else ""))
    return path


# ------------------------------------------------------------------ the store
def test_rows_are_strict_json_lines_written_whole(tmp_path):
    store = ResultsStore(str(tmp_path / "out"))
    with store.lock():
        store.load()
        store.add(_row("a", pearson=float("nan"), final_stats={"x": float("inf")}))
        store.add(_row("b"))
    text = (tmp_path / "out" / RESULTS).read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 2
    first = json.loads(text.splitlines()[0], parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert first["pearson"] is None and first["final_stats"] == {"x": None}


def test_torn_tail_is_set_aside_before_the_next_row(tmp_path):
    out = str(tmp_path / "out")
    good = json.dumps(_row("a"))
    torn = json.dumps(_row("b"))[:25]
    _write(out, good, torn, newline_at_end=False)
    store = ResultsStore(out)
    rows = store.load()
    assert list(rows) == ["a"] and len(store.problems) == 1 and "torn last line" in store.problems[0].reason
    with store.lock():
        store.load(repair=True)
        store.add(_row("c"))
    lines = (tmp_path / "out" / RESULTS).read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["a", "c"]  # the new row did not land on the torn text
    aside = [json.loads(x) for x in (tmp_path / "out" / SET_ASIDE).read_text().splitlines()]
    assert aside[0]["line"] == 2 and aside[0]["text"] == torn and "torn" in aside[0]["reason"]


@pytest.mark.parametrize("line, reason", [
    ("{garbled", "not valid JSON"),
    ("null", "not a JSON object"),
    ("[1, 2]", "not a JSON object"),
    ('{"status": "ok", "config": {}}', "no string 'key'"),
    ('{"key": "k", "status": "weird", "config": {}}', "'status'"),
    ('{"key": "k", "status": "ok"}', "no 'config'"),
    ('{"key": "k", "status": "ok", "config": {"seed": 1}}', "lacks a string 'loss'"),
    ('{"key": "k", "status": "ok", "config": {"loss": "x", "seed": 1}, "spearman": "high"}', "not a number"),
])
def test_bad_middle_lines_are_reported_and_set_aside(tmp_path, line, reason):
    out = str(tmp_path / "out")
    _write(out, json.dumps(_row("a")), line, json.dumps(_row("b")))
    store = ResultsStore(out)
    assert list(store.load()) == ["a", "b"]
    notes = store.check()
    assert len(notes) == 1 and "line 2" in notes[0] and reason in notes[0]
    with store.lock():
        assert [p.line for p in store.repair()] == [2]
    assert [json.loads(x)["key"] for x in open(store.path)] == ["a", "b"]
    assert json.loads(open(store.set_aside_path).read())["text"] == line
    again = ResultsStore(out)
    again.load()
    assert again.check() == []


def test_a_key_is_stored_once(tmp_path):
    out = str(tmp_path / "out")
    store = ResultsStore(out)
    with store.lock():
        store.load()
        store.add(_row("a", status="failed", error="boom"))
        store.add(_row("b"))
        store.add(_row("a"))  # the retry replaces the failed row, in place
    rows = [json.loads(x) for x in open(store.path)]
    assert [(r["key"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok")]
    # a file with a key twice (hand-edited, or from an older version): the later row wins, reported
    _write(out, json.dumps(_row("a", spearman=1.0)), json.dumps(_row("a", spearman=2.0)))
    rows, problems, superseded = parse(open(store.path, "rb").read())
    assert rows["a"]["spearman"] == 2.0 and not problems and [p.line for p in superseded] == [1]
    store = ResultsStore(out)
    with store.lock():
        store.load()
        assert "line 1: run key a is stored again on line 2" in store.check()[0]
        store.repair()
    assert [json.loads(x)["spearman"] for x in open(store.path)] == [2.0]
    assert json.loads(json.loads(open(store.set_aside_path).read())["text"])["spearman"] == 1.0


def test_writes_need_the_lock_and_the_folder_must_be_usable(tmp_path):
    store = ResultsStore(str(tmp_path / "out"))
    with pytest.raises(StoreError, match="lock"):
        store.add(_row("a"))
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        ResultsStore(str(afile)).prepare()
    with pytest.raises(StoreError, match="cannot be created"):
        ResultsStore(str(afile / "under")).prepare()
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(StoreError, match="not writable"):
                ResultsStore(str(ro)).prepare()
        finally:
            ro.chmod(0o700)


def _hold_lock(folder: str, ready, release) -> None:
    with ResultsStore(folder).lock():
        ready.set()
        release.wait(10)


def test_a_second_process_is_refused_or_waits(tmp_path):
    out = str(tmp_path / "out")
    ctx = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(out, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(StoreBusy, match=f"pid {holder.pid}"):
            with ResultsStore(out).lock():
                pass
        release.set()
        with ResultsStore(out).lock(wait=10):  # waits for the holder to finish
            pass
    finally:
        release.set()
        holder.join(10)


_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("store", sys.argv[2])  # stdlib only: no torch to import
store = sys.modules["store"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(store)
with store.ResultsStore(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGKILL"])
def test_no_stale_lock_after_ctrl_c_or_kill(tmp_path, signame):
    """Ctrl-C (SIGINT) releases the lock and removes its file; a killed holder (SIGKILL) cannot,
    but the OS drops its flock: the next grid takes the lock at once and leaves no file behind."""
    import signal
    import subprocess
    import sys

    out = str(tmp_path / "out")
    from gradsurg.train import store

    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, out, store.__file__], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
        lock = os.path.join(out, ".gradsurg.lock")
        assert f"pid {proc.pid}" in open(lock).read()
        with pytest.raises(StoreBusy, match=f"pid {proc.pid}"):  # held while the process lives
            with ResultsStore(out).lock():
                pass
        proc.send_signal(getattr(signal, signame))
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if signame == "SIGINT":
        assert "KeyboardInterrupt" in proc.stderr.read()
        assert not os.path.exists(lock)  # released and removed on the way out
    else:
        assert os.path.exists(lock)  # nobody could remove it ...
    started = time.monotonic()
    with ResultsStore(out).lock():  # ... but it holds no lock: taken at once, not after a wait
        assert f"pid {os.getpid()}" in open(lock).read()
    assert time.monotonic() - started < 2.0
    assert not os.path.exists(lock)


def test_a_waiter_never_locks_a_removed_lock_file(tmp_path):
    """A holder removes the file as it releases; a process that opened the old file and gets its
    flock after that must lock the file now at the path, or two grids would hold 'the' lock."""
    out = str(tmp_path / "out")
    store = ResultsStore(out)
    with store.lock():
        lock = os.path.join(out, ".gradsurg.lock")
        stale = open(lock, "a+")  # a waiter's handle on the file of this holder
    try:
        from gradsurg.train.store import _is_file_at, _try_lock, _unlock

        assert _try_lock(stale)  # the old file's flock is free once it is released ...
        assert not _is_file_at(stale, lock)  # ... but it is no longer the lock file: lock() retries
        _unlock(stale)
    finally:
        stale.close()
    with ResultsStore(out).lock():
        with pytest.raises(StoreBusy):
            with ResultsStore(out).lock():
                pass


# ------------------------------------------------------------------- the grid
def _stub_train(calls):
    from gradsurg.train.trainer import TrainResult

    def train(cfg, **kw):
        calls.append(cfg.run_name())
        os.makedirs(cfg.output_dir, exist_ok=True)
        with open(os.path.join(cfg.output_dir, "eval.csv"), "a") as fh:
            fh.write("attempt\n")
        return TrainResult(config=cfg.to_dict(), steps=1, best_step=1, best_dev=50.0 + cfg.seed,
                           spearman=50.0 + cfg.seed, pearson=float("nan"), n_pairs=10)

    return train


@pytest.fixture
def base(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b\nc d\n")
    return TrainConfig(train_data=str(corpus), eval_data=None, progress=False, tensorboard=False)


def test_duplicate_seeds_and_losses_are_one_run(base):
    configs = grid.expand_grid(base, ["info_nce", "info_nce"], None, {"temperature": [0.05, 0.05]}, [1, 1, 2])
    assert [(c.loss, c.seed) for c in configs] == [("info_nce", 1), ("info_nce", 2)]
    assert "1 (2 times)" in grid.repeated("--seeds", [1, 1, 2])
    assert grid.repeated("--seeds", [1, 2]) is None


def test_grid_stores_each_run_once_and_reruns_replace_run_files(base, tmp_path, monkeypatch):
    from gradsurg.train import trainer

    calls = []
    monkeypatch.setattr(trainer, "train", _stub_train(calls))
    out = str(tmp_path / "grid")
    configs = grid.expand_grid(base, ["info_nce"], None, {}, [1, 2])
    rows = grid.run_grid(configs + configs, out, progress=False)  # the same runs twice: a set
    assert len(calls) == 2 and len(rows) == 2
    summary = report.summarize(rows)
    assert summary[0]["n_seeds"] == 2 and math.isnan(summary[0]["pearson_mean"])
    assert "n/a" in report.format_table(summary)
    # a failed run retried: its row is replaced and its folder starts afresh
    store = ResultsStore(out)
    key = grid.run_key(configs[0])
    with store.lock():
        store.load()
        store.add(dict(store.rows[key], status="failed", error="x"))
    calls.clear()
    grid.run_grid(configs, out, retry_failed=True, progress=False)
    assert len(calls) == 1
    run_dir = os.path.join(out, "runs", f"{configs[0].run_name()}-{key}")
    assert open(os.path.join(run_dir, "eval.csv")).read() == "attempt\n"
    lines = [json.loads(x) for x in open(os.path.join(out, RESULTS))]
    assert sorted(r["key"] for r in lines) == sorted(grid.run_key(c) for c in configs)


def test_grid_sets_a_torn_tail_aside_with_a_message(base, tmp_path, monkeypatch, capsys):
    from gradsurg.train import trainer

    calls = []
    monkeypatch.setattr(trainer, "train", _stub_train(calls))
    out = str(tmp_path / "grid")
    configs = grid.expand_grid(base, ["info_nce"], None, {}, [1, 2])
    grid.run_grid(configs, out, progress=False)
    path = os.path.join(out, RESULTS)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 40])  # the last line cut as a crash mid-write leaves it
    calls.clear()
    rows = grid.run_grid(configs, out, progress=False)
    err = capsys.readouterr().err
    assert "set aside" in err and "line 2: torn last line" in err
    assert len(calls) == 1 and len(rows) == 2  # the torn run is trained again, once
    calls.clear()
    grid.run_grid(configs, out, progress=False)
    assert calls == []  # and the next rerun has nothing left to do
    assert len(read_results(path)) == 2


def test_unscored_and_collapsed_runs_are_shown_not_dropped(base):
    rows = [_row("a", config=base.replace(seed=1).to_dict()),
            _row("b", config=base.replace(seed=2).to_dict(), spearman=None),
            _row("c", config=base.replace(seed=3).to_dict(), collapsed=True, collapse_note="90.33 -> -8.86")]
    flagged = [r for r in rows if report.flag(r)]
    table = report.format_table(report.summarize(rows), flagged)
    assert "seed 2 | not scored" in table and "seed 3 | collapsed | 90.33 -> -8.86" in table


def test_check_and_repair_commands(tmp_path, capsys):
    from gradsurg.cli import main

    out = str(tmp_path / "out")
    good = json.dumps(_row("a"))
    _write(out, good, "null", good.replace('"a"', '"b"')[:30], newline_at_end=False)
    assert main(["ablate", "--out", out, "--check"]) == 1
    printed = capsys.readouterr().out
    assert "line 2: not a JSON object" in printed and "line 3: torn last line" in printed
    assert "1 run(s); 2 line(s) not usable" in printed
    assert main(["ablate", "--out", out, "--repair"]) == 0
    assert "set aside in" in capsys.readouterr().out
    assert main(["ablate", "--out", out, "--check"]) == 0
    assert "1 run(s); 0 line(s) not usable" in capsys.readouterr().out
    assert len(open(os.path.join(out, SET_ASIDE)).read().splitlines()) == 2
    assert main(["ablate", "--out", str(tmp_path / "none"), "--check"]) == 2


def test_add_never_lands_on_a_torn_line(tmp_path):
    out = str(tmp_path / "out")
    _write(out, json.dumps(_row("a")), '{"key": "b", "sta', newline_at_end=False)
    store = ResultsStore(out)
    with store.lock():
        with pytest.raises(StoreError, match="torn"):
            store.add(_row("c"))  # without load(repair=True) first
        store.load(repair=True)
        store.add(_row("c"))
    assert [json.loads(x)["key"] for x in open(store.path)] == ["a", "c"]


def test_perswitch_report_reads_stores_through_the_store(tmp_path, capsys):
    """benchmarks/perswitch_report.py has no reader of its own: a garbled line, a row of a key
    stored again and a torn tail are checked (and named) as gradsurg.train.store checks them."""
    import importlib.util

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("perswitch_report",
                                                  os.path.join(here, "benchmarks", "perswitch_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = str(tmp_path / "out")
    path = _write(out, json.dumps(_row("a", spearman=70.0)), "{not json", json.dumps(_row("a", spearman=71.0)),
                  json.dumps(_row("b", status="failed")), json.dumps(_row("c"))[:20], newline_at_end=False)
    runs = module.load([path])
    assert [(r["key"], r["spearman"]) for r in runs] == [("a", 71.0)]
    err = capsys.readouterr().err
    assert "line 2: not valid JSON" in err and "line 1: run key a is stored again" in err and "torn last line" in err
    assert [r["key"] for r in module.load([out])] == ["a"]  # the folder works as well as its results.jsonl
    with pytest.raises(SystemExit, match="does not exist"):
        module.load([str(tmp_path / "nope.jsonl")])


def test_skipped_failed_runs_point_to_retry_failed(base, tmp_path, monkeypatch, capsys):
    from gradsurg.train import trainer

    calls = []
    good = _stub_train(calls)

    def sometimes(cfg, **kw):
        if cfg.seed == 2 and not any("seed2" in c for c in calls):
            calls.append(cfg.run_name())
            raise FloatingPointError("loss became nan at step 3")
        return good(cfg, **kw)

    monkeypatch.setattr(trainer, "train", sometimes)
    out = str(tmp_path / "grid")
    configs = grid.expand_grid(base, ["info_nce"], None, {}, [1, 2])
    grid.run_grid(configs, out, progress=False)
    capsys.readouterr()
    rows = grid.run_grid(configs, out, progress=False)  # the failed run is skipped, with the hint
    err = capsys.readouterr().err
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert "1 of them failed" in err and "--retry-failed" in err
    rows = grid.run_grid(configs, out, retry_failed=True, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"] and "--retry-failed" not in capsys.readouterr().err
    grid.run_grid(configs, out, progress=False)
    assert "--retry-failed" not in capsys.readouterr().err  # nothing failed: no hint
