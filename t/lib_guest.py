# lib_guest.py - what the tests and benchmarks that boot a Linux guest under QEMU (TCG) share:
# finding a kernel with the modules they load, unpacking it for a fast direct boot, and
# writing an uncompressed initramfs. Imported by t/daemon-guest.t, t/nbd-kernel.t and
# bench/vhost-guest.py.
import glob
import lzma
import os


def find_kernel(mods):
    """The newest readable /boot/vmlinuz-* whose module tree has every module of @mods:
    (vmlinuz, version, {module: path of its .ko}), or (None, None, None)."""
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        ver = os.path.basename(vmlinuz)[len("vmlinuz-"):]
        moddir = "/lib/modules/%s/kernel" % ver
        paths = {}
        for m in mods:
            found = glob.glob("%s/**/%s.ko" % (moddir, m), recursive=True)
            if not found:
                break
            paths[m] = found[0]
        if len(paths) == len(mods) and os.access(vmlinuz, os.R_OK):
            return vmlinuz, ver, paths
    return None, None, None


def extract_vmlinux(vmlinuz, out):
    """The ELF inside the bzImage (xz), written to @out, which QEMU boots directly (PVH) and
    faster; @vmlinuz itself if it holds none."""
    with open(vmlinuz, "rb") as f:
        data = f.read()
    off = data.find(b"\xfd7zXZ\x00")
    if off < 0:
        return vmlinuz
    try:
        elf = lzma.LZMADecompressor().decompress(data[off:])
    except lzma.LZMAError:
        return vmlinuz
    if not elf.startswith(b"\x7fELF"):
        return vmlinuz
    with open(out, "wb") as f:
        f.write(elf)
    return out


def cpio(entries, out):
    """Writes a newc archive, uncompressed (a compressed one before an uncompressed part fails
    to unpack, and TCG unpacks faster without): entries are (name, mode, data), data being
    bytes or (major, minor) for a device node. Returns the archive's size."""
    with open(out, "wb") as f:
        pos = 0
        ino = 1
        for name, mode, data in entries + [("TRAILER!!!", 0, b"")]:
            rdev = (0, 0)
            if isinstance(data, tuple):
                rdev, data = data, b""
            nm = name.encode() + b"\0"
            hdr = "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X" % (
                ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nm), 0)
            chunk = hdr.encode() + nm
            chunk += b"\0" * ((4 - (pos + len(chunk)) % 4) % 4)
            chunk += data
            chunk += b"\0" * ((4 - (pos + len(chunk)) % 4) % 4)
            f.write(chunk)
            pos += len(chunk)
            ino += 1
    return pos
