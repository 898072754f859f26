"""Write the seed corpus of the `extract` fuzz target: small valid archives and hostile ones.

Run from fuzz/: python3 seeds.py  (the fuzzer adds what it finds to the same directory).
"""
import gzip, io, os, tarfile, time, zipfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "extract")
os.makedirs(OUT, exist_ok=True)
MTIME = 1_700_000_000


def tar_bytes(entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, arg in entries:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if kind == "file":
                info.size = len(arg)
                info.mode = 0o755 if name.endswith(".sh") else 0o644
                t.addfile(info, io.BytesIO(arg))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = arg
                t.addfile(info)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                t.addfile(info)
    return buf.getvalue()


def gz(data):
    return gzip.compress(data, mtime=0)


def zip_bytes(entries):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, kind, arg in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            if kind == "file":
                info.external_attr = (0o100644 << 16)
                z.writestr(info, arg)
            elif kind == "dir":
                info.external_attr = (0o040755 << 16) | 0x10
                z.writestr(info, b"")
            elif kind == "symlink":
                info.create_system = 3
                info.external_attr = (0o120777 << 16)
                z.writestr(info, arg)
    return buf.getvalue()


task = [
    ("tasks/", "dir", None),
    ("tasks/t1/prompt.md", "file", b"Fix the failing test.\n"),
    ("tasks/t1/workspace.yaml", "file", b"repo: https://example.invalid/r.git\nversion: 1\n"),
    ("tasks/t1/tests/test_a.sh", "file", b"#!/bin/sh\npytest -q\n"),
    ("agent_code/agent.py", "file", b"print('agent')\n"),
    ("tasks/t1/alias.md", "symlink", "prompt.md"),
]
seeds = {
    "valid.tar.gz": gz(tar_bytes(task)),
    "valid.tar": tar_bytes(task[:3]),
    "valid_pax.tar.gz": gz(tar_bytes(task[:3] + [("d/" + "n" * 120, "file", b"long")], tarfile.PAX_FORMAT)),
    "valid_gnu_longname.tar.gz": gz(tar_bytes([("d/" + "l" * 150, "file", b"x"), ("h", "hardlink", "d/" + "l" * 150)])),
    "valid.zip": zip_bytes(task),
    "hostile_dotdot.tar.gz": gz(tar_bytes([("ok", "file", b"1"), ("../x", "file", b"evil")])),
    "hostile_abs.zip": zip_bytes([("/abs", "file", b"evil")]),
    "hostile_symlink_etc.tar.gz": gz(tar_bytes([("etc", "symlink", "/etc"), ("etc/evil", "file", b"evil")])),
    "hostile_symlink_up.zip": zip_bytes([("a", "symlink", "../../x"), ("a/b", "file", b"evil")]),
    "hostile_link_chain.tar": tar_bytes([("d1/d2/up", "symlink", "../.."), ("z", "symlink", "d1/d2/up/.."), ("z/f", "file", b"x")]),
    "hostile_fifo.tar.gz": gz(tar_bytes([("p", "fifo", None)])),
    "bomb_small.zip": zip_bytes([("z", "file", b"\0" * (512 << 10))]),
}
for name, data in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    print(f"{name}: {len(data)} bytes")
