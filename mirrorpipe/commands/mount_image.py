"""mount-image: a backup's disk, and each of its partitions, as read-only files."""

from .. import cli
from ..errors import Error, UsageError
from ..mount.background import detach
from ..mount.images import open_image
from ..mount.imagefs import serve
from ..mount.mountpoint import check_mountpoint, left_behind, unmount
from ..stream.seekable import DEFAULT_CACHE_SIZE
from ..units import format_size


class MountImage(cli.Command):
    name = "mount-image"
    description = (
        "Mount a backup read-only at MOUNTPOINT, without restoring it: the whole disk as one file\n"
        "(named after the set, or the file without .zst) and one file per partition of its\n"
        "partition table (NAME.p1, NAME.p2 ...), which `mount -o loop,ro` mounts. SOURCE is what\n"
        "reassemble takes (directories, volume files, manifests, ISO images of a set, compressed\n"
        "or raw, with parity volumes), one file made by compress, or a raw image file.\n"
        "\n"
        "A read decompresses only the frames it needs (through compress's seek table), from the\n"
        "volumes that hold them; every byte served was checked (zstd's frame checksums, and the\n"
        "manifests' chunk hashes for a set). What is damaged or missing is rebuilt from parity\n"
        "volumes when the set has them (said on stderr once per volume); otherwise reads of that\n"
        "range fail with EIO, named on stderr, and every other byte stays readable.\n"
        "\n"
        "Before mounting, a set is checked as reassemble checks it before its first byte. Streams\n"
        "without a seek table (stock zstd's output) are refused: make a seekable copy with\n"
        "`compress -d < X.zst | compress > Y.zst`. A set on discs in a drive cannot be mounted:\n"
        "copy the discs or their ISO images into one directory first.")
    epilog = (
        "examples:\n"
        "  mount-image out/ /mnt/backup                 # ls /mnt/backup: image image.p1 image.p2\n"
        "  mount -o loop,ro /mnt/backup/image.p2 /mnt/root\n"
        "  cp /mnt/root/etc/fstab . && umount /mnt/root\n"
        "  mount-image -u /mnt/backup                   # or: fusermount3 -u /mnt/backup\n"
        "  mount-image sda.img.zst /mnt/backup          # one file made by compress\n"
        "\n"
        "The command returns once the mount is ready and serves it in the background (-f: in the\n"
        "foreground, until unmounted or interrupted); SIGTERM unmounts cleanly. FUSE needs root or\n"
        "membership of the fuse group (and /dev/fuse).\n"
        "\n"
        "exit status: 0 mounted (or unmounted with -u), 1 failure (the set's problem, or why it\n"
        "could not be mounted), 2 usage error.")

    def add_arguments(self, parser):
        parser.add_argument("sources", nargs="*", metavar="SOURCE",
                            help="directory, volume file, manifest or ISO image of a set, a file "
                                 "made by compress, or a raw image file")
        parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="the directory to mount on")
        parser.add_argument("-f", "--foreground", action="store_true",
                            help="stay in the foreground until unmounted (messages stay on stderr)")
        parser.add_argument("-u", "--unmount", action="store_true",
                            help="unmount MOUNTPOINT (the only path given) instead")
        parser.add_argument("--cache", type=cli.size_argument, default=DEFAULT_CACHE_SIZE,
                            metavar="SIZE", help="memory for decoded frames, shared by all reads "
                                                 f"(default {format_size(DEFAULT_CACHE_SIZE)})")

    def run(self, args):
        if args.unmount:
            if args.sources:
                raise UsageError("-u takes the mount point alone")
            unmount(args.mountpoint)
            return None
        if not args.sources:
            raise UsageError("give the backup (SOURCE...) and then the MOUNTPOINT")
        sources, mountpoint = args.sources, args.mountpoint
        check_mountpoint(mountpoint)
        image, name = open_image(sources, args.cache, say=self.messages.note)
        if args.foreground:
            serve(image, name, mountpoint, lambda problem: problem and self.messages.error(problem),
                  self.messages.note)
            return None
        report, status = detach()
        if report is None:
            if status is None:
                raise Error(f"the process that was to serve {mountpoint} ended before the mount "
                            f"was ready (killed?); {left_behind(mountpoint)}")
            return status
        try:
            serve(image, name, mountpoint, report, self.messages.note)
        except Error as exc:
            report(str(exc))
            raise
        return None


main = cli.entry_point(MountImage)
