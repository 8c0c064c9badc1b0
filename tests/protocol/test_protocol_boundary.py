"""protocol/ depends on numpy and zstandard only, never on torch or the rest of the project.

The one exception is Ed25519 (protocol/ed25519.py): it imports ``cryptography`` inside the functions
that build an Ed25519 signer or verifier, so ``import protocol`` never loads it (checked below). zlib-ng
(protocol/checksum.py, a faster CRC-32) is optional: imported in a ``try`` that falls back to ``zlib``
(checked below with zlib-ng made unimportable)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

PROTOCOL_DIR = pathlib.Path(__file__).resolve().parents[2] / "protocol"
ALLOWED_THIRD_PARTY = {"numpy", "zstandard"}
LAZY_ONLY = {"ed25519.py": {"cryptography"}}  # imported inside functions, never at module level
OPTIONAL = {"checksum.py": {"zlib_ng"}}  # imported inside try / except ImportError, with a stdlib fallback
PROJECT_PACKAGES = {"feddst_core", "simulator", "datasources", "feddst_cli", "cloud", "edge_agent", "bench"}


def test_protocol_imports_only_stdlib_numpy_zstandard_and_itself():
    for path in PROTOCOL_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in PROJECT_PACKAGES, f"{path.name} imports {name}"
                if top in OPTIONAL.get(path.name, ()):
                    assert any(isinstance(t, ast.Try) and node in t.body and any(
                        isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in t.handlers)
                        for t in ast.walk(tree)), f"{path.name} imports {name} outside try / except ImportError"
                    continue
                if top in LAZY_ONLY.get(path.name, ()):
                    assert id(node) not in top_level, f"{path.name} imports {name} at module level"
                    continue
                assert top == "protocol" or top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names or \
                    top == "__future__", f"{path.name} imports third-party {name}"


def test_importing_protocol_does_not_load_torch():
    code = ("import sys, protocol, protocol.ed25519; assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert 'cryptography' not in sys.modules, 'cryptography was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROTOCOL_DIR.parent)


def test_protocol_works_without_zlib_ng():
    code = ("import sys; sys.modules['zlib_ng'] = None; import protocol, protocol.checksum as c; "
            "assert c.SOURCE == 'zlib', c.SOURCE; from protocol import Status, decode_message, encode_message; "
            "m = Status('dev-1', 'online'); assert decode_message(encode_message(m, bytes(32)), bytes(32)) == m")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROTOCOL_DIR.parent)
