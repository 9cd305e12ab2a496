"""The server's parts without HTTP: the batching queue, the streamed text, the command line."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from dyllm.cli import main
from dyllm.generation import GenerationConfig
from dyllm.serve.jobs import Job
from dyllm.serve.policy_spec import PolicySpec, parse_policy_spec
from dyllm.serve.preparation import batch_invariant
from dyllm.serve.scheduler import BatchScheduler, QueueFull, SchedulerClosed
from dyllm.serve.streaming import (
    AnswerText,
    cut_at_stop,
    render_canvas,
    shown_text,
    tokens_for_text,
)


def job(key: object = "a", rows: int = 1) -> Job:
    return Job(
        rows=[[1]] * rows,
        choice_rows=list(range(rows)),
        config=GenerationConfig(),
        policy=PolicySpec("dense"),
        batch_key=key,
    )


def test_the_scheduler_gathers_compatible_jobs_up_to_the_row_limit() -> None:
    scheduler = BatchScheduler(max_batch_rows=4, window_s=0.0, max_queued=10)
    jobs = [job("a", 2), job("b"), job("a"), job("a", 2), job(None), job("a")]
    for item in jobs:
        scheduler.submit(item)
    assert scheduler.next_batch() == [jobs[0], jobs[2], jobs[5]]  # 2 + 1 + 1 rows; jobs[3] waits
    assert scheduler.next_batch() == [jobs[1]]
    assert scheduler.next_batch() == [jobs[3]]
    assert scheduler.next_batch() == [jobs[4]]  # a job without a key runs alone
    scheduler.close()
    assert scheduler.next_batch() is None


def test_the_window_waits_for_batch_mates_and_a_full_batch_goes_at_once() -> None:
    scheduler = BatchScheduler(max_batch_rows=3, window_s=0.5, max_queued=10)
    first, second, third = job(), job(), job()
    scheduler.submit(first)
    timer = threading.Timer(0.05, scheduler.submit, args=(second,))
    timer.start()
    began = time.monotonic()
    assert scheduler.next_batch() == [first, second]
    assert time.monotonic() - began >= 0.4  # the window, counted from the first job's arrival
    for item in (first, second, third):
        item.batch_key = "full"
        scheduler.submit(item)
    began = time.monotonic()
    assert scheduler.next_batch() == [first, second, third]
    assert time.monotonic() - began < 0.3


def test_the_queue_is_bounded_and_closes() -> None:
    scheduler = BatchScheduler(max_batch_rows=1, window_s=0.0, max_queued=2)
    kept = job()
    scheduler.submit(kept)
    scheduler.submit(job())
    with pytest.raises(QueueFull) as full:
        scheduler.submit(job())
    assert full.value.retry_after >= 1
    assert scheduler.withdraw(kept) and not scheduler.withdraw(kept)
    assert len(scheduler) == 1
    scheduler.close()
    with pytest.raises(SchedulerClosed):
        scheduler.submit(job())
    assert scheduler.next_batch() is not None  # what was queued still runs
    assert scheduler.next_batch() is None


def test_only_draw_free_options_share_batches() -> None:
    greedy = GenerationConfig(sampler="llada", temperature=0.0, remasking="low_confidence")
    assert batch_invariant(greedy)
    assert not batch_invariant(greedy.replace(temperature=0.7))
    assert not batch_invariant(greedy.replace(remasking="random"))
    dream = GenerationConfig(sampler="dream", temperature=0.0, alg="entropy")
    assert batch_invariant(dream)
    assert not batch_invariant(dream.replace(alg="origin"))
    assert not batch_invariant(dream.replace(alg_temp=0.5))


def test_policy_specs_are_checked_and_keyed() -> None:
    spec = parse_policy_spec("dyllm:tau=0.995", (), {}, family="llada", from_request=True)
    same = parse_policy_spec("dyllm", (), {"tau": 0.995}, family="llada", from_request=True)
    assert spec.key == same.key and spec.params == {"tau": 0.995}
    with pytest.raises(ValueError, match="unknown policy 'turbo'"):
        parse_policy_spec("turbo", (), {}, family="llada", from_request=True)
    with pytest.raises(ValueError, match="takes no tux"):
        parse_policy_spec("dyllm", (), {"tux": 1}, family="llada", from_request=True)
    with pytest.raises(ValueError, match="tau"):
        parse_policy_spec("dyllm", (), {"tau": 7.0}, family="llada", from_request=True)
    with pytest.raises(ValueError, match="given twice"):
        parse_policy_spec("dyllm:tau=0.9", (), {"tau": 0.9}, family="llada", from_request=True)
    calibrating = parse_policy_spec(
        "adaptive:target_fraction=0.3", (), {}, family="llada", from_request=True
    )
    assert calibrating.runs_alone


def test_stop_strings_and_held_back_text() -> None:
    assert cut_at_stop("12 = 34", ["=", " "]) == ("12", 2)
    assert shown_text("abcdef", ["xyz"], complete=False) == ("abcd", False)  # 2 chars wait
    assert shown_text("abXcd", ["X"], complete=False) == ("ab", True)
    assert shown_text("ab\ufffd", [], complete=False) == ("ab", False)  # half a character
    assert shown_text("ab\ufffd", [], complete=True) == ("ab\ufffd", False)
    # "c" lies inside the known text, but "bcdef" could start earlier: wait until certain
    assert shown_text("abc", ["bcdef", "c"], complete=False) == ("", False)
    assert shown_text("abcdef", ["bcdef", "c"], complete=True) == ("a", True)


def test_streamed_pieces_add_up_to_the_whole_answer() -> None:
    vocabulary = {1: "ab", 2: "c", 3: "=", 4: "d", 5: "ef"}

    def decode(ids):
        return "".join(vocabulary[i] for i in ids)

    answer = [1, 2, 4, 3, 5, 1]
    for stops in ((), ("=",), ("d=", "zz"), ("cd=ef",)):
        text = AnswerText(decode, stops)
        pieces = [text.update(answer[:end], complete=False) for end in (1, 2, 4, 5)]
        pieces.append(text.update(answer, complete=True))
        assert "".join(pieces) == shown_text(decode(answer), stops, complete=True)[0]
    assert tokens_for_text(answer, 3, decode) == 2  # "ab" + "c"


def test_the_canvas_shows_masks_as_glyphs() -> None:
    def decode(ids):
        return "".join(chr(96 + i) for i in ids)

    assert render_canvas([1, 2, 0, 3, 0], 0, decode) == "ab\u2592c\u2592"
    assert render_canvas([5, 0], 0, None) == "5 \u2592"


def test_serve_without_the_extra_says_what_to_install(monkeypatch, capsys) -> None:
    for name in [name for name in sys.modules if name.startswith("dyllm.serve")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["serve"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "pip install 'dyllm[serve]'" in error


def test_serve_refuses_bad_settings_in_one_line(capsys) -> None:
    assert main(["serve", "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--policy", "turbo"]) == 2
    assert "unknown policy 'turbo'" in capsys.readouterr().err
