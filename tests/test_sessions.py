"""Many sessions on one Models: weights loaded once, KV and drafter state per session, pools shared."""

from __future__ import annotations

import os
import stat

import pytest

from ouroboros_lite import Engine, OuroborosError
from ouroboros_lite.runtime import Models, Runtime, Session

from support import PROMPTS, generate_ids, options

N = 24


@pytest.fixture(scope="module")
def models(draft_path):
    with Models(draft_path, options=options()) as models:
        yield models


def test_interleaved_sessions_each_give_their_own_greedy_output(models, draft_path):
    prompts = [models.tokenize_prompt(p, chat=True) for p in PROMPTS[:2]]
    with Runtime(draft_path, options=options()) as alone:
        expected = [generate_ids(alone, tokens, N) for tokens in prompts]
    sessions = [Session(models, method=method) for method in ("ar", "ar")]
    try:
        assert sessions[0].target is sessions[1].target is models.target  # one copy of the weights
        streams = [s.generate(tokens, max_tokens=N) for s, tokens in zip(sessions, prompts)]
        produced: list[list[int]] = [[], []]
        while streams[0] is not None or streams[1] is not None:  # one token of each in turn
            for i, stream in enumerate(streams):
                if stream is None:
                    continue
                response = next(stream, None)
                if response is None:
                    streams[i] = None
                elif response.token >= 0:
                    produced[i].append(response.token)
        assert produced == expected
    finally:
        for session in sessions:
            session.close()
    assert models.target.n_vocab > 0  # closing the sessions left the weights loaded


def test_sessions_of_a_pair_share_its_phrase_pool(models):
    first, second = Session(models, method="ouroboros"), Session(models, method="ouroboros")
    try:
        assert first.pool is second.pool is models.pool("ouroboros")
        assert first.pool is not first.pool_of("lookahead")  # methods compared side by side do not share
        before = len(first.pool)
        generate_ids(first, first.tokenize_prompt(PROMPTS[2], chat=True), N, "ouroboros")
        assert len(second.pool) > before  # what one conversation learned drafts for the other
    finally:
        first.close()
        second.close()


def test_engines_on_shared_models_leave_them_loaded(models):
    with Engine(models=models, method="ar") as one, Engine(models=models, method="ar") as two:
        a = one.generate("The capital of France is", max_tokens=8).text
        b = two.generate("The capital of France is", max_tokens=8).text
        assert a == b and a
    with Engine(models=models, method="ar") as again:  # the weights outlived both Engines
        assert again.generate("The capital of France is", max_tokens=8).text == a


def test_an_engine_on_shared_models_refuses_model_options(models, draft_path):
    with pytest.raises(OuroborosError, match="n_ctx: set on the shared Models"):
        Engine(models=models, n_ctx=512)
    with pytest.raises(OuroborosError, match="target"):
        Engine(draft_path, models=models)


def test_the_speed_gates_estimates_travel_with_the_pool_file(draft_path, tmp_path):
    """A new process of the pair starts its gate from what the last one measured (saved beside the
    pool), except plain steps, which it measures again; a FIFO in the file's place blocks nothing."""
    pool = tmp_path / "pair.pool"
    prompt = "Repeat after me five times: the quick brown fox jumps over the lazy dog."
    with Models(draft_path, options=options()) as first:
        with Session(first, method="ouroboros") as session:
            generate_ids(session, session.tokenize_prompt(prompt, chat=True), 64, "ouroboros")
            session.save_pool(pool)
        measured = {name: arm for name, arm in first.gate("ouroboros").items() if name != "plain" and arm.cycles}
    assert measured and (tmp_path / "pair.pool.gate.json").is_file()
    with Models(draft_path, options=options()) as second:
        with Session(second, method="ouroboros") as session:
            session.load_pool(pool)
            arms = second.gate("ouroboros")
            assert arms["plain"].cycles == 0
            for name, arm in measured.items():
                assert (arms[name].tokens, arms[name].seconds, arms[name].cycles) == (arm.tokens, arm.seconds, arm.cycles)
    os.mkfifo(tmp_path / "fifo.pool.gate.json")
    with Models(draft_path, options=options()) as third:
        with Session(third, method="ouroboros") as session:
            session.load_pool(tmp_path / "fifo.pool")  # did not block
            assert all(arm.cycles == 0 for arm in third.gate("ouroboros").values())
            generate_ids(session, session.tokenize_prompt(prompt, chat=True), 8, "ouroboros")
            session.save_pool(tmp_path / "fifo.pool")
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo.pool.gate.json").st_mode)  # not replaced
