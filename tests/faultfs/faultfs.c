/* faultfs: a FUSE file system holding one file, a mirror of a backing image whose reads fail
 * with EIO where a real failing disk's would: in chosen sector ranges, optionally only for the
 * first few reads (errors that a retry heals), and everywhere from some offset on (a disk that
 * stops answering).
 *
 *   faultfs --image IMAGE [--name disk] [--bad-list FILE] [--fail-from BYTES]
 *           [--error-delay-us N] MOUNTPOINT [FUSE OPTIONS]
 *
 * Each line of the bad list is "FIRST_SECTOR SECTOR_COUNT [FAILURES]" (512-byte sectors);
 * without FAILURES the range never reads. Ranges must not overlap. A read request that touches a failing byte fails as
 * a whole, like a disk command. Files are opened with direct_io, so the kernel passes each
 * read through at its own offset and size, without read-ahead: a 512-byte pread is answered
 * for that one sector.
 *
 * A second file, "stats", counts the read requests of the image: "reads N failed M\n".
 */
#define FUSE_USE_VERSION 31

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECTOR 512

struct bad_range {
	uint64_t start, end; /* bytes, end exclusive */
	long failures_left;  /* < 0: fails forever */
};

static const char *image_path;
static char image_name[256] = "/disk";
static int image_fd = -1;
static off_t image_size;
static struct bad_range *bad;
static size_t bad_count;
static uint64_t fail_from = UINT64_MAX;
static long error_delay_us;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long reads, failed;

static int by_start(const void *a, const void *b)
{
	const struct bad_range *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

static void load_bad_list(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		perror(path);
		exit(2);
	}
	size_t capacity = 0;
	unsigned long long first, count;
	long failures;
	char line[256];
	while (fgets(line, sizeof line, f)) {
		int fields = sscanf(line, "%llu %llu %ld", &first, &count, &failures);
		if (fields < 2)
			continue;
		if (bad_count == capacity) {
			capacity = capacity ? 2 * capacity : 64;
			bad = realloc(bad, capacity * sizeof *bad);
		}
		bad[bad_count++] = (struct bad_range){
			first * SECTOR, (first + count) * SECTOR, fields == 3 ? failures : -1};
	}
	fclose(f);
	qsort(bad, bad_count, sizeof *bad, by_start);
}

/* True when a read of [start, end) must fail; counts down the failures of healing ranges. */
static int read_fails(uint64_t start, uint64_t end)
{
	if (end > fail_from)
		return 1;
	/* Ranges do not overlap, so the first range ending after start is the only candidate
	 * before any range that starts at or after end. */
	size_t lo = 0, hi = bad_count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (bad[mid].end <= start)
			lo = mid + 1;
		else
			hi = mid;
	}
	int fails = 0;
	for (size_t i = lo; i < bad_count && bad[i].start < end; i++) {
		if (bad[i].failures_left < 0) {
			fails = 1;
		} else if (bad[i].failures_left > 0) {
			bad[i].failures_left--;
			fails = 1;
		}
	}
	return fails;
}

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	(void)fi;
	memset(st, 0, sizeof *st);
	if (strcmp(path, "/") == 0) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
	} else if (strcmp(path, image_name) == 0) {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = image_size;
		st->st_blocks = (image_size + 511) / 512;
	} else if (strcmp(path, "/stats") == 0) {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = 4096;
	} else {
		return -ENOENT;
	}
	return 0;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
		      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	(void)offset;
	(void)fi;
	(void)flags;
	if (strcmp(path, "/") != 0)
		return -ENOENT;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	fill(buf, image_name + 1, NULL, 0, 0);
	fill(buf, "stats", NULL, 0, 0);
	return 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi)
{
	if (strcmp(path, image_name) != 0 && strcmp(path, "/stats") != 0)
		return -ENOENT;
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	fi->direct_io = 1;
	return 0;
}

static int fs_read(const char *path, char *buf, size_t size, off_t offset,
		   struct fuse_file_info *fi)
{
	(void)fi;
	if (strcmp(path, "/stats") == 0) {
		char text[128];
		pthread_mutex_lock(&lock);
		int length = snprintf(text, sizeof text, "reads %lu failed %lu\n", reads, failed);
		pthread_mutex_unlock(&lock);
		if (offset >= length)
			return 0;
		size_t n = (size_t)(length - offset) < size ? (size_t)(length - offset) : size;
		memcpy(buf, text + offset, n);
		return n;
	}
	if (offset >= image_size)
		return 0;
	if ((off_t)size > image_size - offset)
		size = image_size - offset;
	pthread_mutex_lock(&lock);
	reads++;
	int fails = read_fails(offset, offset + size);
	failed += fails;
	pthread_mutex_unlock(&lock);
	if (fails) {
		if (error_delay_us)
			usleep(error_delay_us);
		return -EIO;
	}
	size_t got = 0;
	while (got < size) {
		ssize_t n = pread(image_fd, buf + got, size - got, offset + got);
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += n;
	}
	return got;
}

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->direct_io = 1;
	cfg->kernel_cache = 0;
	cfg->attr_timeout = 3600;
	cfg->entry_timeout = 3600;
	return NULL;
}

static const struct fuse_operations operations = {
	.getattr = fs_getattr,
	.readdir = fs_readdir,
	.open = fs_open,
	.read = fs_read,
	.init = fs_init,
};

int main(int argc, char *argv[])
{
	/* Our options come first; everything after them goes to FUSE. */
	int i = 1;
	for (; i + 1 < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
		if (strcmp(argv[i], "--image") == 0)
			image_path = argv[i + 1];
		else if (strcmp(argv[i], "--name") == 0)
			snprintf(image_name, sizeof image_name, "/%s", argv[i + 1]);
		else if (strcmp(argv[i], "--bad-list") == 0)
			load_bad_list(argv[i + 1]);
		else if (strcmp(argv[i], "--fail-from") == 0)
			fail_from = strtoull(argv[i + 1], NULL, 0);
		else if (strcmp(argv[i], "--error-delay-us") == 0)
			error_delay_us = strtol(argv[i + 1], NULL, 0);
		else
			break;
	}
	if (!image_path || i >= argc) {
		fprintf(stderr, "usage: %s --image IMAGE [--name NAME] [--bad-list FILE] "
				"[--fail-from BYTES] [--error-delay-us N] MOUNTPOINT [FUSE OPTIONS]\n",
			argv[0]);
		return 2;
	}
	image_fd = open(image_path, O_RDONLY);
	if (image_fd < 0) {
		perror(image_path);
		return 2;
	}
	struct stat st;
	if (fstat(image_fd, &st) < 0) {
		perror(image_path);
		return 2;
	}
	image_size = st.st_size;
	argv[i - 1] = argv[0];
	return fuse_main(argc - (i - 1), argv + (i - 1), &operations, NULL);
}
