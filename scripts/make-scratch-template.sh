#!/usr/bin/env bash
# Regenerates src/vm/scratch/template.ext4.sparse.gz: the empty ext4 file
# system every VM's scratch disk starts from. kiln embeds it and writes it out
# sparsely at run time, so users need neither root nor mkfs. Only the non-zero
# 4 KiB blocks are stored (about 1,200 of them for 64 GiB).
#
# No journal: the disk is disposable (attached with cache=unsafe), so a
# journal would only cost writes. lazy_itable_init: inode tables stay
# unwritten; the agent mounts with noinit_itable so the kernel never zeroes them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
size="${1:-64G}"
img="$(mktemp)"
trap 'rm -f "$img"' EXIT
truncate -s "$size" "$img"
mke2fs -q -F -t ext4 -O ^has_journal -m 0 -L kiln-scratch \
  -E lazy_itable_init=1,nodiscard,root_owner=0:0 "$img"
python3 - "$img" "$root/src/vm/scratch/template.ext4.sparse.gz" <<'PY'
import gzip, os, struct, sys
src, dst = sys.argv[1], sys.argv[2]
BLOCK = 4096
size = os.path.getsize(src)
records = []
with open(src, 'rb') as f:
    fd, off = f.fileno(), 0
    while True:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        f.seek(start)
        data = f.read(end - start)
        for i in range(0, len(data), BLOCK):
            block = data[i:i + BLOCK]
            if block.count(0) != len(block):
                records.append((start + i, block))
        off = end
# Format (all integers little-endian): magic b"KILNSPARSE1\0", u64 image size,
# u32 record count, then per record u64 offset, u32 length, bytes.
out = bytearray(b"KILNSPARSE1\0")
out += struct.pack('<QI', size, len(records))
for offset, block in records:
    out += struct.pack('<QI', offset, len(block)) + block
with gzip.GzipFile(dst, 'wb', compresslevel=9, mtime=0) as g:
    g.write(out)
print(f"{dst}: {size} bytes, {len(records)} blocks, {os.path.getsize(dst)} bytes compressed")
PY
