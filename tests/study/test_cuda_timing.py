"""Timings and memory on CUDA (issue 22, item 4), proven on the CPU with CUDA's clock and memory calls recorded.

CUDA kernels run asynchronously: a clock read right after ``fit`` returns would put the fit's
queued work into the predict column. Each clock of the evaluation loop and of the cost worker
is read after ``torch.cuda.synchronize`` of the detector's own device, CUDA's start-up is paid
before anything is timed, and the memory monitor measures the GPU it was given, not GPU 0.
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import torch

from fsad.data.mvtec import load_category
from fsad.data.support_sets import make_support_sets
from fsad.methods.base import Detector, Scores
from fsad.study import comparison, evaluation
from fsad.study.comparison import MemoryMonitor
from fsad.study.evaluation import TestSet, evaluate_detector


class Recorder(Detector):
    """A detector 'on cuda:1' that computes nothing and logs its calls."""

    name, device, image_size = "recorder", "cuda:1", 64

    def __init__(self, events: list[str]):
        self.events = events

    def embed(self, images):
        self.events.append("embed")
        return (images,)

    def fit(self, support):
        self.events.append("fit")

    def predict_embedded(self, embedded):
        self.events.append("predict")
        n = len(embedded[0])
        return Scores(maps=torch.rand(n, 64, 64), image=torch.rand(n))

    def state(self):
        return {}

    def load_state(self, state):
        pass


def test_the_evaluation_loop_reads_each_clock_after_the_gpu_is_done(toy_root, monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(f"synchronize {device}"))
    monkeypatch.setattr(evaluation, "warm_up", lambda device: events.append(f"warm-up {device}"))
    monkeypatch.setattr(evaluation, "time", SimpleNamespace(perf_counter=lambda: events.append("clock") or float(len(events))))
    category = load_category(toy_root, "disc")
    evaluate_detector(Recorder(events), category, make_support_sets(category, (2,), n_sets=2), TestSet.load(category, 64),
                      ("image_auroc",), progress=False)
    clocks = [i for i, event in enumerate(events) if event == "clock"]
    assert len(clocks) == 6  # before fit, after fit, after predict; two sets
    assert all(events[i - 1] == "synchronize cuda:1" for i in clocks)
    assert events.index("warm-up cuda:1") < events.index("fit")


def test_the_cost_worker_warms_up_then_times_after_synchronizing(monkeypatch, tmp_path):
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(f"synchronize {device}"))
    monkeypatch.setattr(comparison, "warm_up", lambda device: events.append(f"warm-up {device}"))
    monkeypatch.setattr(comparison, "build_method", lambda ctx, name: Recorder(events))
    monkeypatch.setattr(comparison, "MemoryMonitor", lambda device: _NoMonitor())
    monkeypatch.setattr(evaluation, "time", SimpleNamespace(perf_counter=lambda: events.append("clock") or float(len(events))))
    job = tmp_path / "job.pkl"
    ctx = SimpleNamespace(device="cuda:1")
    job.write_bytes(pickle.dumps((ctx, "recorder", torch.zeros(2, 3, 64, 64), torch.zeros(4, 3, 64, 64), 1)))
    comparison._cost_worker(job)
    clocks = [i for i, event in enumerate(events) if event == "clock"]
    assert len(clocks) == 3 and all(events[i - 1] == "synchronize cuda:1" for i in clocks)
    assert events.index("warm-up cuda:1") < events.index("fit")


class _NoMonitor:
    peak_mib = process_peak_mib = float("nan")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_the_memory_monitor_measures_its_own_gpu(monkeypatch):
    asked: list[tuple[str, object]] = []
    for name, value in (("synchronize", None), ("reset_peak_memory_stats", None), ("memory_allocated", 2**20),
                        ("max_memory_allocated", 3 * 2**20)):
        monkeypatch.setattr(torch.cuda, name, lambda device=None, name=name, value=value: asked.append((name, device)) or value)
    with MemoryMonitor("cuda:1") as monitor:
        pass
    assert asked and {device for _, device in asked} == {"cuda:1"}, asked
    assert np.isclose(monitor.peak_mib, 2.0) and np.isclose(monitor.process_peak_mib, 3.0)
