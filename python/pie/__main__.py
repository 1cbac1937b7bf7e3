"""``python -m pie``: package-level commands.

  python -m pie selftest [--json]
  python -m pie plan MODEL [--arch NAME] [--calibration FILE] [--profile PROFILE.json]
                           [--transport memory|tcp] [--link loopback|lan|wan] [--json]

``plan`` loads and compiles a checkpoint as ``python -m pie.serve server``
does, then prints the Plan's steps, the traffic of every step (exact bytes,
AND gates, online rounds), the cost model's predicted times with
``--profile``, and the float-versus-fixed-point agreement on the calibration
images (the --calibration file, the checkpoint's stored sample, or else 64
random images).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .link import PRESETS
from .selftest import run_selftest

RANDOM_IMAGES = 64


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module's docstring); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m pie", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser(
        "selftest",
        help="check the native build: AES path and known answers, SHA-256, SEAL, OpenSSL",
    )
    st.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    pl = sub.add_parser("plan", help="compile a checkpoint and print its plan, traffic, predicted "
                        "times and fixed-point agreement")
    pl.add_argument("model", type=Path, help="checkpoint: pie's format, or a DeepReDuce .pth.tar "
                    "(then give --arch)")
    pl.add_argument("--arch", default=None, help="network name (see pie.models.names()) for "
                    "checkpoints that do not record their configuration")
    pl.add_argument("--calibration", type=Path, default=None, metavar="FILE",
                    help="calibration images: .npz (N,C,H,W; floats in [0,1] or uint8) or a folder "
                    "of PNG/JPEG images (default: the checkpoint's sample, else random images)")
    pl.add_argument("--profile", type=Path, default=None, metavar="PROFILE.json",
                    help="machine profile (pie.cost.Profile) for predicted times")
    pl.add_argument("--transport", choices=("memory", "tcp"), default="memory",
                    help="transport the times are predicted for (default memory)")
    pl.add_argument("--link", choices=list(PRESETS), default=None,
                    help="network link the times are predicted across (pie.Link presets)")
    pl.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv)

    if args.command == "plan":
        return _plan(pl, args)
    report = run_selftest()
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0 if report.ok else 1


def _plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .calibration import CalibrationError, random_calibration
    from .models.checkpoint import CheckpointError
    from .compiler import CompileError
    from .cost import Profile, ProfileError, estimate, traffic
    from .serve import load_model

    try:
        profile = Profile.load(args.profile) if args.profile is not None else None
        loaded = load_model(args.model, args.arch, args.calibration)
    except (CheckpointError, CalibrationError, CompileError, ProfileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # one line, no usage text
        raise SystemExit(2) from None
    plan = loaded.plan
    cost = estimate(plan, profile, args.transport, link=args.link) if profile is not None else traffic(plan)
    if loaded.calibration is not None:
        images, images_desc = loaded.calibration, loaded.calibration_source
    else:
        images = random_calibration(plan.input_shape, RANDOM_IMAGES, pixel_max=plan.pixel_max)
        images_desc = f"{RANDOM_IMAGES} uniformly random images (no calibration set given or stored)"
    agreement = plan.calibrate(images, loaded.net)
    policy = plan.policy

    if args.json:
        doc: dict[str, Any] = {
            "model": str(args.model),
            "relus": plan.relu_count(),
            "gc_cost": plan.gc_cost(),
            "online_rounds": cost.online_round_trips,
            "steps": [
                {**s.to_dict(), "ring_bits": plan.tensors[s.output].ring_bits} for s in cost.steps
            ],
            "totals": cost.totals(),
            "times": None if profile is None else {
                "offline_seconds": cost.offline_seconds, "online_seconds": cost.online_seconds,
                "transport": args.transport, "link": args.link, "profile": str(args.profile)},
            "calibration": {"source": loaded.calibration_source, "images": images_desc,
                            "agreement": agreement.to_dict()},
            "policy": {k: policy.get(k) for k in ("weight_bits", "act_bits", "tolerance",
                                                  "calibration_agreement", "chosen_weight_bits",
                                                  "chosen_act_bits")},
        }
        if profile is None:
            doc["totals"].pop("offline_seconds")
            doc["totals"].pop("online_seconds")
            for s in doc["steps"]:
                s.pop("offline_seconds")
                s.pop("online_seconds")
        print(json.dumps(doc, indent=2))
        return 0

    print(f"model: {args.model} ({plan.relu_count():,} ReLUs, {len(plan.steps)} steps)\n")
    print(plan.summary())
    print("\ntraffic per step (exact bytes, both directions)"
          + ("" if profile is None else f"; predicted times for {args.transport}"
                                        f"{f' across {args.link}' if args.link else ''} with {args.profile}"))
    print(_traffic_table(plan, cost, with_times=profile is not None))
    if profile is None:
        print("\npredicted times: need --profile (see pie.cost.measure_profile)")
    else:
        print(f"\npredicted: offline {cost.offline_seconds:.3f} s, online {cost.online_seconds:.3f} s "
              f"({cost.online_round_trips} online rounds, {cost.offline_round_trips} offline round trips, "
              f"{args.transport}{f' across {args.link}' if args.link else ''})")
    tol = policy.get("tolerance", {})
    print(f"\nfloat vs fixed point on {images_desc}: top-1 agreement "
          f"{agreement.top1_agreement:.2%}, relative logit error {agreement.relative_logit_error:.2e}"
          f"{', overflows ' + str(agreement.overflows) if agreement.overflows else ''}"
          f" (tolerance: agreement >= {tol.get('min_agreement')}, error <= "
          f"{tol.get('max_relative_logit_error')})")
    return 0


def _traffic_table(plan: Any, cost: Any, with_times: bool) -> str:
    """One line per step: ring, online round, AND gates, offline / online bytes (and times)."""
    from .tables import format_table

    columns = [("#", ">", 3), ("kind", "<", 8), ("output", "<", 22), ("ring", ">", 4), ("rnd", ">", 3),
               ("AND gates", ">", 11), ("offline B", ">", 12), ("online B", ">", 11)]
    if with_times:
        columns += [("off ms", ">", 8), ("on ms", ">", 8)]

    def times(offline_s: float, online_s: float) -> list[str]:
        return [f"{1e3 * offline_s:.1f}", f"{1e3 * online_s:.1f}"] if with_times else []

    rows = [[s.index, s.kind, s.output[:22], plan.tensors[s.output].ring_bits, s.round or "",
             f"{s.and_gates:,}" if s.and_gates else "", f"{s.offline_bytes:,}", f"{s.online_bytes:,}",
             *times(s.offline_seconds, s.online_seconds)] for s in cost.steps]
    total = ["", "total", "(+ session set-up)", "", cost.online_round_trips,
             f"{sum(s.and_gates for s in cost.steps):,}", f"{cost.offline_bytes:,}", f"{cost.online_bytes:,}",
             *times(cost.offline_seconds, cost.online_seconds)]
    return format_table(columns, rows, [total])

if __name__ == "__main__":
    sys.exit(main())
