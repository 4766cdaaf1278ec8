"""When a finished job counts as done: its settings and its inputs (make's rule)."""
import json
import os

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
