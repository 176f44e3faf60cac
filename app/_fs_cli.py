"""``edil fs``: R1FS, the encrypted content-addressed store, from the command line.

* ``edil fs put FILE --key-file node.key [--to BOXKEY|card.json ...]``: encrypt ``FILE`` (``-``:
  standard input) for the key file's node and each ``--to`` recipient, store and pin it; prints
  the file's CID.
* ``edil fs get CID --key-file node.key [-o OUT]``: fetch, check and decrypt (standard output
  when ``-o`` is omitted); only a recipient's key file opens it.
* ``edil fs ls [--json]``: the files in the store (CID, size, chunks, recipients, pinned, name).
* ``edil fs pin CID [--remove]``: pin a file, or unpin it.
* ``edil fs gc [--min-age SECONDS]``: remove what no pin keeps.

The store is a directory (``--store DIR``, default ``$EDIL_R1FS_DIR`` or ``./.edil-r1fs``) or a
NATS JetStream object store (``--nats nats://host:4222 [--bucket NAME]``). Every failure is one
line on standard error and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from edil import EdilError


def add_parser(sub: Any) -> None:
    fs = sub.add_parser("fs", help="R1FS: encrypted, content-addressed files on a directory or NATS JetStream")
    fsub = fs.add_subparsers(dest="fs_command", required=True)

    def store_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", type=Path, default=None, help="store directory (default: $EDIL_R1FS_DIR or ./.edil-r1fs)")
        p.add_argument("--nats", default=None, metavar="URL", help="use the JetStream object store at this NATS server instead")
        p.add_argument("--bucket", default="EDIL_R1FS", help="object-store bucket with --nats (default EDIL_R1FS)")

    put = fsub.add_parser("put", help="encrypt, store and pin a file; prints its CID")
    put.add_argument("file", help="the file to store ('-': standard input)")
    put.add_argument("--key-file", type=Path, default=None, help="a node seed (edil node init): its node is a recipient")
    put.add_argument("--to", action="append", default=[], metavar="BOXKEY|CARD",
                     help="another recipient: a 32-byte X25519 box key in hex, or a node card JSON file (repeatable)")
    put.add_argument("--name", default=None, help="file name kept in the (public) manifest (default: FILE's name)")
    put.add_argument("--chunk-size", type=int, default=None, help="plaintext bytes per chunk (default 1 MiB)")
    put.add_argument("--no-pin", action="store_true", help="do not pin (the next gc removes it)")
    store_options(put)
    get = fsub.add_parser("get", help="fetch, check and decrypt a file")
    get.add_argument("cid")
    get.add_argument("--key-file", type=Path, required=True, help="the seed of a recipient node")
    get.add_argument("-o", "--output", type=Path, default=None, help="where to write it (default: standard output)")
    store_options(get)
    ls = fsub.add_parser("ls", help="list the files in the store")
    ls.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    store_options(ls)
    pin = fsub.add_parser("pin", help="pin a file so gc keeps it (--remove: unpin)")
    pin.add_argument("cid")
    pin.add_argument("--remove", action="store_true", help="unpin instead")
    store_options(pin)
    gc = fsub.add_parser("gc", help="remove every object no pin keeps")
    gc.add_argument("--min-age", type=float, default=600.0, metavar="SECONDS",
                    help="keep objects younger than this, e.g. a put in progress elsewhere (default 600)")
    store_options(gc)


def _open(args: argparse.Namespace, chunk_size: int | None = None) -> Any:
    from edil.runtime import R1FS, LocalBlobStore, NatsBlobStore, check_nats_url

    if args.nats is not None and args.store is not None:
        raise EdilError("give --store or --nats, not both")
    if args.nats is not None:
        check_nats_url(args.nats)
        store: Any = NatsBlobStore(args.nats, bucket=args.bucket)
    else:
        store = LocalBlobStore(args.store or Path(os.environ.get("EDIL_R1FS_DIR") or ".edil-r1fs"))
    try:
        return R1FS(store) if chunk_size is None else R1FS(store, chunk_size=chunk_size)
    except ValueError as exc:
        store.close()
        raise EdilError(f"--chunk-size: {exc}") from None


def _identity(path: Path) -> Any:
    from edil.runtime import NodeIdentity

    from ._node_cli import read_seed

    return NodeIdentity.from_seed(read_seed(path))


def _recipient(text: str) -> bytes:
    """A ``--to`` value: 64 hex digits (optionally ``0x``) or a node card JSON file with ``box_key``."""
    hexed = text[2:] if text.startswith("0x") else text
    if len(hexed) == 64:
        try:
            return bytes.fromhex(hexed)
        except ValueError:
            pass
    try:
        card = json.loads(Path(text).read_text())
        key = bytes.fromhex(str(card["box_key"]).removeprefix("0x"))
    except OSError as exc:
        raise EdilError(f"--to {text!r} is neither a 64-hex-digit box key nor a readable card file ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise EdilError(f"--to {text!r}: the card file has no hex box_key") from None
    if len(key) != 32:
        raise EdilError(f"--to {text!r}: a box key is 32 bytes")
    return key


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise EdilError(f"cannot read {name}: {exc.strerror}") from None


def _write_output(path: Path | None, data: bytes) -> None:
    if path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")  # never a half-written file under the name
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EdilError(f"cannot write {path}: {exc.strerror}") from None


def _run(args: argparse.Namespace) -> int:
    cmd = args.fs_command
    if cmd == "put":
        recipients = [_recipient(t) for t in args.to]
        if args.key_file is not None:
            recipients.insert(0, bytes(_identity(args.key_file).box.public_key))
        if not recipients:
            raise EdilError("put needs a recipient: --key-file and/or --to")
        if len(set(recipients)) != len(recipients):
            raise EdilError("a recipient is named twice")
        data = _read_input(args.file)
        name = args.name if args.name is not None else ("" if args.file == "-" else Path(args.file).name)
        with _open(args, args.chunk_size) as fs:
            try:
                print(fs.put(data, recipients, name=name[:255], pin=not args.no_pin))
            except (TypeError, ValueError) as exc:
                raise EdilError(str(exc)) from None
        return 0
    if cmd == "get":
        ident = _identity(args.key_file)
        with _open(args) as fs:
            data = fs.get(args.cid, ident)
        _write_output(args.output, data)
        return 0
    with _open(args) as fs:
        if cmd == "ls":
            entries = fs.ls()
            if args.json:
                print(json.dumps([e.__dict__ for e in entries], indent=2))
            else:
                print(f"{'CID':61}  {'SIZE':>12}  {'CHUNKS':>6}  {'TO':>3}  PIN  NAME")
                for e in entries:
                    if e.error is not None:
                        print(f"{e.cid:61}  {'?':>12}  {'?':>6}  {'?':>3}  {'yes' if e.pinned else '-':3}  ({e.error})")
                    else:
                        print(f"{e.cid:61}  {e.size:>12}  {e.chunks:>6}  {e.recipients:>3}  {'yes' if e.pinned else '-':3}  {e.name}")
        elif cmd == "pin":
            (fs.unpin if args.remove else fs.pin)(args.cid)
            print(f"{'unpinned' if args.remove else 'pinned'} {args.cid}")
        else:
            if args.min_age < 0:
                raise EdilError("--min-age must be >= 0")
            report = fs.gc(min_age_s=args.min_age)
            print(f"removed {len(report.removed)} objects ({report.freed_bytes} bytes), kept {report.kept}")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run ``edil fs <command>``; returns the exit status (2 on any EDIL error, printed as one line)."""
    try:
        return _run(args)
    except EdilError as exc:
        print(f"edil fs {args.fs_command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
