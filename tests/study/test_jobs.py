"""When a finished job counts as done: its settings and its inputs (make's rule)."""
import json
import os
from pathlib import Path

from mlic.study.jobs import Job, _up_to_date


def _job(tmp_path, key, deps=(), config=None):
    return Job(key, str(tmp_path / key), "train", config or {"lr": 0.01}, list(deps))


def _finish(job, mtime, config=None):
    os.makedirs(job.out, exist_ok=True)
    job.result_path.write_text(json.dumps({"config": config if config is not None else job.config}))
    os.utime(job.result_path, (mtime, mtime))


def test_done_needs_the_same_settings(tmp_path):
    j = _job(tmp_path, "a", config={"lr": 0.01, "scales": (1.0, 2.0)})
    assert not j.done()
    _finish(j, 100)
    assert j.done()  # tuples and lists compare as JSON does
    _finish(j, 100, config={"lr": 0.003, "scales": [1.0, 2.0]})
    assert not j.done()
    j.result_path.write_text("{truncated")
    assert not j.done()


def test_done_needs_the_same_number_of_threads(tmp_path):
    """On some CPUs a stage's bits depend on its threads: a result made with another count
    is not this job's; one written before results recorded the count is kept."""
    j = Job("t", str(tmp_path / "t"), "train", {"lr": 0.01}, [], threads=1)
    os.makedirs(j.out)
    j.result_path.write_text(json.dumps({"config": j.config, "threads": 2}))
    assert not j.done()
    j.result_path.write_text(json.dumps({"config": j.config, "threads": 1}))
    assert j.done()
    j.result_path.write_text(json.dumps({"config": j.config}))
    assert j.done()


def test_a_job_is_redone_after_an_input_it_depends_on(tmp_path):
    teacher, student, other = _job(tmp_path, "teacher"), _job(tmp_path, "s", ["teacher"]), _job(tmp_path, "o")
    by_key = {j.key: j for j in (teacher, student, other)}
    _finish(teacher, 100)
    _finish(student, 200)
    _finish(other, 50)
    assert _up_to_date(student, by_key) and _up_to_date(other, by_key)
    _finish(teacher, 300)  # the teacher was trained again: the student must be too
    assert not _up_to_date(student, by_key) and _up_to_date(teacher, by_key) and _up_to_date(other, by_key)
    os.remove(teacher.result_path)
    assert not _up_to_date(student, by_key)


class _FakeProcess:
    """Stands in for a job's process: finishes at its second poll, writing the job's result."""

    running = []
    peak = 0
    started = []

    def __init__(self, cmd, stdout=None, stderr=None, env=None):
        spec = json.loads(open(cmd[-1]).read())
        self.job = Job(**spec)
        self.polls = 0
        _FakeProcess.running.append(self.job)
        _FakeProcess.started.append((self.job.key, [j.key for j in _FakeProcess.running]))
        _FakeProcess.peak = max(_FakeProcess.peak, sum(j.threads for j in _FakeProcess.running))
        self.returncode = None

    def poll(self):
        self.polls += 1
        if self.polls < 2:
            return None
        self.job.result_path.write_text(json.dumps({"config": self.job.config}))
        _FakeProcess.running.remove(self.job)
        self.returncode = 0
        return 0


def test_jobs_take_as_many_workers_as_threads(tmp_path, monkeypatch):
    """A two-thread job runs alone on two workers; a ready job that does not fit holds back
    the ones after it (no one-thread job overtakes it)."""
    from mlic.study import jobs as jobs_module

    monkeypatch.setattr(jobs_module.subprocess, "Popen", _FakeProcess)
    monkeypatch.setattr(jobs_module.time, "sleep", lambda s: None)
    _FakeProcess.running, _FakeProcess.peak, _FakeProcess.started = [], 0, []
    pre = Job("pre", str(tmp_path / "pre"), "train", {"a": 1}, [], threads=2)
    teacher = Job("teacher", str(tmp_path / "teacher"), "train", {"a": 2}, ["pre"], threads=2)
    alone = Job("alone", str(tmp_path / "alone"), "train", {"a": 3}, ["pre"], threads=1)
    s1 = Job("s1", str(tmp_path / "s1"), "train", {"a": 4}, ["teacher"], threads=1)
    s2 = Job("s2", str(tmp_path / "s2"), "train", {"a": 5}, ["s1"], threads=1)
    failed = jobs_module.run_jobs([pre, teacher, s1, alone, s2], workers=2, log=lambda m: None)
    assert failed == []
    assert _FakeProcess.peak == 2
    started = dict(_FakeProcess.started)
    assert started["pre"] == ["pre"] and started["teacher"] == ["teacher"]  # alone, though "alone" was ready
    assert started["alone"] == ["s1", "alone"]  # beside stage 1, after the teacher


def test_a_setting_added_since_at_its_default_keeps_a_job_done(tmp_path):
    from mlic.training import TrainConfig

    now = TrainConfig(out="x", stage="wsddn").to_dict()
    before = json.loads(json.dumps(now))
    del before["run"]["memory_format"]  # written before the setting existed
    j = _job(tmp_path, "t", config=now)
    _finish(j, 100, config=before)
    assert j.done()
    changed = json.loads(json.dumps(now))
    changed["run"]["memory_format"] = "contiguous"
    _finish(j, 100, config=changed)
    assert not j.done()


def test_expected_time_counts_the_jobs_left(tmp_path):
    from mlic.study.jobs import expected_time

    a = Job("a", str(tmp_path / "a"), "train", {"a": 1}, [], threads=2, expected_seconds=600)
    b = Job("b", str(tmp_path / "b"), "train", {"b": 1}, [], threads=1, expected_seconds=1200)
    c = Job("c", str(tmp_path / "c"), "train", {"c": 1}, [])
    assert expected_time([a, b, c], 2) == ("3 to run, typically 20 min on 2 cores (for 2 of them; the others' times "
                                           "are not known)")
    _finish(c, 100)
    _finish(b, 100)
    assert expected_time([a, b, c], 2) == "1 to run, typically 10 min on 2 cores"


def test_time_left_follows_the_typical_times_and_never_rises(tmp_path):
    from mlic.study.jobs import TimeLeft

    a, b, c = (Job(k, str(tmp_path / k), "train", {}, [], expected_seconds=e) for k, e in (("a", 100), ("b", 300),
                                                                                            ("c", 100)))
    clock = TimeLeft(workers=1, after=50)
    assert clock.seconds([a, b, c]) == 550  # the typical times, and what follows the jobs
    clock.finished(a, 200)  # twice its typical time: at that pace 850 s are left, more than said before
    assert clock.seconds([b, c]) == 550
    clock.finished(b, 300)  # 500 s for 400 typical: c takes 125
    assert clock.seconds([c]) == 175
    assert clock.seconds([], [(c, 100)]) == 75  # c has run 100 of its 125 s
    unknown = Job("u", str(tmp_path / "u"), "train", {}, [])  # no typical time: the finished jobs' mean
    assert TimeLeft(workers=2).seconds([unknown, unknown]) == 0
    clock = TimeLeft(workers=2)
    clock.finished(unknown, 40)
    assert clock.seconds([unknown, unknown]) == 40


def test_run_jobs_names_each_job_and_its_time_left_only_falls(tmp_path, monkeypatch):
    """The jobs finish at twice, then at half their typical times: every progress line names
    the job as a person reads it, with its folder beside it, and the time left never rises."""
    import re

    from mlic.study import jobs as jobs_module

    now = [0.0]
    monkeypatch.setattr(jobs_module.subprocess, "Popen", _FakeProcess)
    monkeypatch.setattr(jobs_module.time, "sleep", lambda s: now.__setitem__(0, now[0] + 10))
    monkeypatch.setattr(jobs_module.time, "perf_counter", lambda: now[0])
    _FakeProcess.running, _FakeProcess.peak, _FakeProcess.started = [], 0, []
    keys = ["seed0/pretrain", "seed0/teacher", "seed0/nokd", "seed0/kd-ce-decay-s1fc-all"]
    jobs = [Job(k, str(tmp_path / k), "train", {"k": k}, [], threads=1, expected_seconds=e)
            for k, e in zip(keys, (5, 5, 40, 40))]
    lines = []
    assert jobs_module.run_jobs(jobs, workers=1, log=lines.append, tag="demo", after_seconds=30) == []
    assert "[demo] start seed 0: ImageNet stand-in [seed0/pretrain] (typically 5 s)" in lines
    assert any(line.startswith("[demo] done seed 0: student, KD as released (soft cross-entropy) "
                               "[seed0/kd-ce-decay-s1fc-all] in ") for line in lines)
    left = []
    for line in lines:
        m = re.search(r"about (\d+) (s|min) left", line)
        if m:
            left.append(int(m.group(1)) * (60 if m.group(2) == "min" else 1))
    assert len(left) == 4 and left == sorted(left, reverse=True) and left[-1] == 30, lines


def test_a_job_folder_another_run_holds_is_never_deleted(tmp_path, monkeypatch):
    """An interrupted job's folder is started afresh, unless a live process still holds it
    (a job left running by a stopped driver): then the job fails with a sentence naming the
    holder, and the folder keeps every byte. A lock file nobody holds does not block."""
    from mlic.engine.run_lock import LOCK_NAME, hold_folder
    from mlic.study import jobs as jobs_module

    monkeypatch.setattr(jobs_module.subprocess, "Popen", _FakeProcess)
    monkeypatch.setattr(jobs_module.time, "sleep", lambda s: None)
    _FakeProcess.running, _FakeProcess.peak, _FakeProcess.started = [], 0, []
    held, stale = _job(tmp_path, "held"), _job(tmp_path, "stale")
    for j in (held, stale):
        os.makedirs(j.out)
        (Path(j.out) / "checkpoint.pt").write_bytes(b"work of an earlier attempt")
    (Path(stale.out) / LOCK_NAME).write_text("process 1 on elsewhere, started long ago\n")
    lines = []
    with hold_folder(held.out):
        failed = jobs_module.run_jobs([held, stale], workers=1, log=lines.append)
    assert failed == ["held"]
    assert (Path(held.out) / "checkpoint.pt").read_bytes() == b"work of an earlier attempt"
    assert not held.done() and stale.done() and not (Path(stale.out) / "checkpoint.pt").exists()
    assert [k for k, _ in _FakeProcess.started] == ["stale"]
    line = next(m for m in lines if "FAILED" in m)
    assert f"{held.out} is in use by another run (process {os.getpid()} on " in line, line
