"""The machine profile of the cost model (``pie.cost.measure_profile``).

By default a reduced measurement (budget ``PIE_BENCH_PROFILE_SECONDS``,
default 5 s, i.e. the smallest sizes) keeps the profiler from rotting;
``bench/report.py`` measures the full profile (60 s budget) for the report.
The figures land in ``extra_info``.
"""

from __future__ import annotations

import os

from pie.cost import Profile, measure_profile

SECONDS = float(os.environ.get("PIE_BENCH_PROFILE_SECONDS", "5"))


def test_measure_profile(benchmark, tmp_path) -> None:  # type: ignore[no-untyped-def]
    profiles: list[Profile] = []
    benchmark.pedantic(lambda: profiles.append(measure_profile(SECONDS)), rounds=1, iterations=1)
    profile = profiles[-1]
    path = tmp_path / "profile.json"
    profile.save(path)
    assert Profile.load(path) == profile
    # The online GC time lands on its work; at the smoke sizes the AND-gate, other-gate
    # and label columns are nearly collinear, so the fit may put it on any of them.
    assert (profile.gc_online_per_and_s + profile.gc_online_per_gate_s
            + profile.gc_online_per_label_s) > 0
    assert profile.he_per_input_s + profile.he_per_product_s + profile.he_per_reply_s > 0
    assert min(profile.bandwidth.values()) > 0
    benchmark.extra_info.update(profile.to_dict())
