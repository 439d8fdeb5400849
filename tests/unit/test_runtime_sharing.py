"""serve_app.model.runtime_sharing: one runtime per deployment and node class (measured
once, published set-if-absent, adopted, kept on the node for the next Ray instance), with
an in-memory board and the simulated candidates of serve_app.model.runtime_simulation
(made-up figures, nothing timed)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from serve_app.model import generator as model
from serve_app.model.choice_board import ChoiceTable
from serve_app.model.generator import Runtime
from serve_app.model.kept_choices import KEPT_CHOICES_ENV, KeptChoices, kept_choices_path
from serve_app.model.runtime_sharing import (
    RuntimeSettings,
    cpu_class,
    cpu_flags,
    cuda_class,
    decide_runtime,
    decision_key,
    node_class,
)
from serve_app.model.runtime_simulation import SIMULATION_ENV
from serve_app.model.runtimes import Measurement, RuntimeChoice, choice_from_summary

AUTO = RuntimeSettings("auto", "cpu", "auto", ("random-seed0:align_corners=True",))
X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16 amx_tile amx_bf16 avx512_vnni
processor\t: 1
flags\t\t: fpu sse2
"""
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n"


class Board:
    """The board actor's body behind the ``ChoiceBoard`` calls, counting them."""

    def __init__(self) -> None:
        self.table = ChoiceTable()
        self.calls: list[str] = []

    def lookup(self, key):
        self.calls.append("lookup")
        return self.table.lookup(key)

    def publish(self, key, record):
        self.calls.append("publish")
        return self.table.publish(key, dict(record))


class Unreachable:
    def __init__(self) -> None:
        self.calls = 0

    def lookup(self, key):
        self.calls += 1
        raise TimeoutError("the board did not answer")

    publish = lookup


class NeverCalled:
    def lookup(self, key):
        raise AssertionError("nothing to share: the board must not be asked")

    publish = lookup


def no_generators():
    raise AssertionError("this replica must not load generators to measure")


@pytest.fixture
def simulated(monkeypatch, tmp_path):
    """Three qualifying CPU candidates; the n-th measurement finds the n-th fastest."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(SIMULATION_ENV, str(tmp_path / "turns"))
    return tmp_path / "turns"


def decide(board, replica: str, settings: RuntimeSettings = AUTO, threads: int = 1, kept=None):
    return decide_runtime(settings, threads, no_generators, board, replica, kept)


# --- the node class ------------------------------------------------------------------------


def test_cpu_flags_of_the_first_processor():
    assert {"avx2", "avx512_bf16", "amx_bf16"} <= cpu_flags(X86_CPUINFO)
    assert cpu_flags(ARM_CPUINFO) == {"fp", "asimd", "bf16", "sve"}
    assert cpu_flags("processor\t: 0\n") == frozenset()


def test_cpu_class_keeps_the_flags_the_candidates_depend_on():
    amx = cpu_class("AMX", cpu_flags(X86_CPUINFO))
    assert amx == "cpu:amx:avx2+avx512f+avx512_bf16+amx_tile+amx_bf16"
    avx2 = cpu_class("AVX2", frozenset({"avx", "avx2", "sse2"}))
    assert avx2 == "cpu:avx2:avx2"
    # Same capability, bf16 or not: other classes (bf16 qualifies on one, not the other).
    with_bf16 = cpu_class("AVX512", frozenset({"avx2", "avx512f", "avx512_bf16"}))
    without = cpu_class("AVX512", frozenset({"avx2", "avx512f"}))
    assert with_bf16 != without
    # Flags no candidate depends on do not split a class.
    assert cpu_class("AVX2", frozenset({"avx2", "rdrand", "sha_ni"})) == avx2
    assert cpu_class("DEFAULT", frozenset()) == "cpu:default:none"


def test_cuda_class_names_the_gpu():
    assert cuda_class("NVIDIA H200", (9, 0), "12.8") == "cuda:NVIDIA H200:sm90:cuda-12.8"
    assert cuda_class("NVIDIA L4", (8, 9), "12.8") != cuda_class("NVIDIA H200", (9, 0), "12.8")


def test_node_class_of_this_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one = node_class("auto", threads=1)
    assert one.startswith("cpu:") and f"/torch-{torch.__version__}/" in one
    assert one.endswith("/threads-1")
    assert node_class("cpu", threads=1) == one
    assert node_class("cpu", threads=4) != one


def test_decision_key_follows_the_settings():
    node = "cpu:avx2:avx2/torch-2.13.0/threads-1"
    assert decision_key(node, AUTO) == decision_key(node, RuntimeSettings(*vars(AUTO).values()))
    other_weights = RuntimeSettings("auto", "cpu", "auto", ("random-seed1:align_corners=True",))
    fp32_only = RuntimeSettings("auto", "cpu", "fp32", AUTO.weights)
    keys = {decision_key(node, s) for s in (AUTO, other_weights, fp32_only)}
    assert len(keys) == 3
    assert decision_key("cpu:amx:amx_bf16/torch-2.13.0/threads-1", AUTO) not in keys


# --- the board -----------------------------------------------------------------------------


def test_the_first_publisher_wins():
    table = ChoiceTable()
    assert table.lookup("k") is None
    assert table.publish("k", {"chosen": "eager-bf16", "decided_by": "a"})["decided_by"] == "a"
    assert table.publish("k", {"chosen": "eager-fp32", "decided_by": "b"})["decided_by"] == "a"
    assert table.lookup("k")["chosen"] == "eager-bf16"
    assert table.publish("other", {"chosen": "eager-fp32", "decided_by": "b"})["chosen"] == (
        "eager-fp32"
    )
    assert set(table.entries()) == {"k", "other"}


def test_a_published_choice_round_trips():
    runtime = Runtime("cpu", "bf16", channels_last=True, cast=True)
    choice = RuntimeChoice(
        runtime,
        "fastest within 40 dB of eager-fp32",
        {"eager-fp32": Measurement(4.0, math.inf), "eager-bf16": Measurement(7.0, 52.0)},
        {"eager-fp32": "not chosen: 4 img/s vs 7"},
    )
    again = choice_from_summary(choice.summary(), runtime)
    assert again == choice


# --- the decision --------------------------------------------------------------------------


def test_without_sharing_replicas_would_disagree(simulated):
    """What the simulation is for: two replicas measuring alone choose differently."""
    first, second = decide(None, "r1"), decide(None, "r2")
    assert (first.runtime.kind, second.runtime.kind) == ("eager-fp32", "eager-bf16")
    assert first.source == second.source == "measured"
    assert not first.shared and not second.shared


def test_the_first_replica_measures_and_publishes_the_next_adopt(simulated):
    board = Board()
    first = decide(board, "r1")
    assert (first.runtime.kind, first.source, first.shared) == ("eager-fp32", "measured", True)
    assert board.calls == ["lookup", "publish"]
    second = decide(board, "r2")  # no_generators: it loads nothing and times nothing
    assert second.runtime == first.runtime
    assert (second.source, second.decided_by, second.shared) == ("adopted", "r1", True)
    assert second.node_class == first.node_class
    assert len(list(simulated.iterdir())) == 1  # one measurement in all
    summary = second.summary()
    assert summary["chosen"] == "eager-fp32" and summary["source"] == "adopted"
    assert summary["measured"] == first.summary()["measured"]  # the figures it was chosen on
    assert summary["node_class"] == first.node_class


def test_another_node_class_decides_for_itself(simulated):
    board = Board()
    decide(board, "r1", threads=1)
    other = decide(board, "r2", threads=2)
    assert (other.source, other.runtime.kind) == ("measured", "eager-bf16")
    assert other.shared
    assert decide(board, "r3", threads=2).decided_by == "r2"


def test_a_redeploy_with_other_weights_decides_anew(simulated):
    board = Board()
    decide(board, "r1")
    reweighted = RuntimeSettings("auto", "cpu", "auto", ("random-seed9:align_corners=True",))
    assert decide(board, "r2", reweighted).source == "measured"


def test_a_replica_that_loses_the_race_adopts_the_winner(simulated):
    class Raced(Board):
        """Another replica publishes between this one's lookup and its publish."""

        def lookup(self, key):
            found = super().lookup(key)
            if found is None:
                self.table.publish(key, {**decide(None, "r0").summary(), "decided_by": "r0"})
                return None
            return found

    board = Raced()
    late = decide(board, "r1")  # measured (turn 1: bf16), but r0 (turn 0: fp32) was first
    assert (late.runtime.kind, late.source, late.decided_by) == ("eager-fp32", "adopted", "r0")
    assert late.shared


def test_an_unreachable_board_means_measuring_alone(simulated, caplog):
    board = Unreachable()
    with caplog.at_level(logging.WARNING, "serve_app.model.runtime_sharing"):
        alone = decide(board, "r1")
    assert (alone.source, alone.shared, alone.decided_by) == ("measured", False, "r1")
    assert "unreachable" in caplog.text and "decides alone" in caplog.text
    assert board.calls == 1  # not asked again to publish (each call may wait its timeout)


def test_a_failed_publish_keeps_the_own_measurement(simulated, caplog):
    class PublishFails(Board):
        def publish(self, key, record):
            raise ConnectionError("actor died")

    with caplog.at_level(logging.WARNING, "serve_app.model.runtime_sharing"):
        alone = decide(PublishFails(), "r1")
    assert (alone.runtime.kind, alone.source, alone.shared) == ("eager-fp32", "measured", False)
    assert "actor died" in caplog.text


def test_a_published_runtime_this_replica_cannot_run_is_not_adopted(simulated, caplog):
    board = Board()
    key = decision_key(node_class("cpu", 1), AUTO)
    cuda_only = {"chosen": "eager-fp16-autocast", "reason": "x", "decided_by": "gpu-replica"}
    board.table.publish(key, cuda_only)
    with caplog.at_level(logging.WARNING, "serve_app.model.runtime_sharing"):
        alone = decide(board, "r1")
    assert (alone.source, alone.shared) == ("measured", False)
    assert "cannot run here" in caplog.text
    assert board.calls == ["lookup"]  # the published choice stands
    assert board.table.lookup(key) == cuda_only


def test_a_configured_runtime_is_not_shared(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = RuntimeSettings("eager-fp32", "cpu", "auto", AUTO.weights)
    decision = decide(NeverCalled(), "r1", settings)
    assert (decision.runtime.kind, decision.source, decision.choice.reason) == (
        "eager-fp32",
        "configured",
        "configured",
    )
    assert decision.node_class.startswith("cpu:")


def test_a_single_candidate_needs_no_board(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(model, "cpu_supports_bf16", lambda: False)
    decision = decide(NeverCalled(), "r1")
    assert (decision.runtime.kind, decision.source) == ("eager-fp32", "only-candidate")
    assert decision.summary()["reason"] == "the only runtime available"
    assert "eager-bf16" in decision.summary()["refused"]


def test_the_log_line_says_how_the_runtime_was_decided(simulated):
    board = Board()
    assert decide(board, "r1").describe().startswith("measured here, shared, node class cpu:")
    assert decide(board, "r2").describe().startswith("adopted from replica r1, shared, ")


# --- kept on the node across Ray instances ------------------------------------------------


def test_a_measured_choice_is_kept_and_a_new_ray_instance_adopts_it(simulated, tmp_path):
    kept = KeptChoices(tmp_path / "cache" / "runtime-choices.json")  # no folder yet
    first = decide(Board(), "r1", kept=kept)
    assert first.source == "measured"
    key = decision_key(first.node_class, AUTO)
    assert kept.lookup(key)["chosen"] == first.runtime.kind

    fresh = Board()  # another Ray instance: its board starts empty
    again = decide(fresh, "r7", kept=kept)  # no_generators: nothing loaded, nothing timed
    assert (again.runtime, again.source, again.decided_by) == (first.runtime, "adopted", "r1")
    assert again.shared and fresh.calls == ["lookup", "publish"]  # published for the others
    assert decide(fresh, "r8", kept=kept).decided_by == "r1"  # from the board now
    assert len(list(simulated.iterdir())) == 1  # one measurement in all


def test_a_choice_on_the_board_stands_over_the_kept_one(simulated, tmp_path):
    kept = KeptChoices(tmp_path / "runtime-choices.json")
    decide(Board(), "r1", kept=kept)  # kept: eager-fp32 (the first turn)
    board = Board()
    running = decide(board, "r2")  # another node's replica published bf16 (turn 1) first
    adopted = decide(board, "r3", kept=kept)
    assert (adopted.runtime.kind, adopted.decided_by) == (running.runtime.kind, "r2")


def test_an_adopted_choice_is_kept_so_a_board_that_restarts_learns_it_again(simulated, tmp_path):
    """Node B's replicas adopted node A's choice; the board restarts empty: B's next
    replica republishes it from B's disk (it measured anew, and may have chosen another
    runtime than the replicas still running: the cache split in two)."""
    board, node_b = Board(), KeptChoices(tmp_path / "b" / "runtime-choices.json")
    first = decide(board, "r1")  # node A measures (it keeps nothing here)
    decide(board, "r2", kept=node_b)  # node B adopts
    restarted = Board()
    again = decide(restarted, "r3", kept=node_b)  # no_generators: nothing measured
    assert (again.runtime, again.decided_by, again.shared) == (first.runtime, "r1", True)
    assert len(list(simulated.iterdir())) == 1
    alone = decide(Unreachable(), "r4", kept=KeptChoices(tmp_path / "c.json"))
    assert alone.source == "measured"  # measured alone: kept for the next start
    assert KeptChoices(tmp_path / "c.json").lookup(decision_key(alone.node_class, AUTO))


def test_a_kept_choice_without_a_board_is_this_replica_s_alone(simulated, tmp_path):
    kept = KeptChoices(tmp_path / "runtime-choices.json")
    decide(Board(), "r1", kept=kept)
    alone = decide(Unreachable(), "r2", kept=kept)
    assert (alone.source, alone.decided_by, alone.shared) == ("adopted", "r1", False)


def test_an_unreadable_file_means_measuring_and_is_replaced(simulated, tmp_path, caplog):
    path = tmp_path / "runtime-choices.json"
    path.write_text("{ not json")
    with caplog.at_level(logging.WARNING, "serve_app.model.kept_choices"):
        decided = decide(Board(), "r1", kept=KeptChoices(path))
    assert decided.source == "measured" and "unreadable" in caplog.text
    assert KeptChoices(path).lookup(decision_key(decided.node_class, AUTO)) is not None


def test_a_file_that_cannot_be_written_warns_and_decides_all_the_same(simulated, tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    kept = KeptChoices(blocked / "runtime-choices.json")  # its folder is a file
    with caplog.at_level(logging.WARNING, "serve_app.model.kept_choices"):
        decided = decide(Board(), "r1", kept=kept)
    assert decided.source == "measured" and "not kept" in caplog.text


def test_the_kept_choices_live_in_the_service_s_cache_unless_named(monkeypatch, tmp_path):
    monkeypatch.delenv(KEPT_CHOICES_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kept_choices_path() == tmp_path / "animegan-serve" / "runtime-choices.json"
    monkeypatch.setenv(KEPT_CHOICES_ENV, str(tmp_path / "elsewhere.json"))
    assert kept_choices_path() == tmp_path / "elsewhere.json"
