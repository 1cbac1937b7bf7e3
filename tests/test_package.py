"""Packaging: stubs, markers, re-exports and the selftest command."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib import resources

import pie
from pie import _core


def test_typing_files_are_installed() -> None:
    files = resources.files("pie")
    assert files.joinpath("py.typed").is_file()
    assert files.joinpath("_core.pyi").is_file()


def test_stub_matches_extension() -> None:
    tree = ast.parse(resources.files("pie").joinpath("_core.pyi").read_text())
    stubbed = {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    } | {
        t.id
        for node in tree.body
        if isinstance(node, (ast.AnnAssign, ast.Assign))
        for t in ([node.target] if isinstance(node, ast.AnnAssign) else node.targets)
        if isinstance(t, ast.Name)
    }
    public = {n for n in dir(_core) if not n.startswith("_")} | {"__version__"}
    # Private names are the stub's own typing helpers (e.g. a shared base), not native ones.
    assert {n for n in stubbed if not n.startswith("_") or n == "__version__"} == public


def test_all_is_complete() -> None:
    assert sorted(pie.__all__) == sorted(set(pie.__all__))
    for name in pie.__all__:
        assert getattr(pie, name) is not None


def test_selftest_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pie", "selftest", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["AES path"]["detail"].startswith(pie.crypto.default_aes_backend())
    assert "SEAL 4.1" in checks["SEAL"]["detail"]


def test_selftest_report_records_failures() -> None:
    from pie import selftest

    def broken() -> str:
        raise RuntimeError("boom")

    saved = list(selftest.CHECKS)
    selftest.CHECKS[:] = [("broken", broken)]
    try:
        report = selftest.run_selftest()
    finally:
        selftest.CHECKS[:] = saved
    assert not report.ok
    assert "RuntimeError: boom" in report.table()
