/* The restore copy floor (`make bench`): read a file that is in the page cache into fresh anonymous memory
 * with N threads, each faulting in its share with MADV_POPULATE_WRITE before reading it, in chunks (what
 * the patched CRIU restorer does). Usage: copy_floor FILE THREADS [CHUNK_MIB]; prints one JSON line. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

struct part { int fd; char *memory; off_t start; size_t length; size_t chunk; int error; };

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *copy_part(void *arg)
{
	struct part *part = arg;
	for (size_t done = 0; done < part->length;) {
		size_t length = part->length - done < part->chunk ? part->length - done : part->chunk;
		char *target = part->memory + part->start + done;
		madvise(target, length, MADV_POPULATE_WRITE);
		ssize_t got = pread(part->fd, target, length, part->start + done);
		if (got <= 0) { part->error = got < 0 ? errno : EIO; return NULL; }
		done += got;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 3) { fprintf(stderr, "usage: %s FILE THREADS [CHUNK_MIB]\n", argv[0]); return 2; }
	int threads = atoi(argv[2]);
	size_t chunk = (argc > 3 ? strtoul(argv[3], NULL, 10) : 0) << 20;
	int fd = open(argv[1], O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) || threads < 1 || threads > 64) { perror(argv[1]); return 2; }
	size_t size = st.st_size, page = 4096;
	if (!chunk) chunk = 4 << 20; /* the restorer's chunk */
	char *memory = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (memory == MAP_FAILED) { perror("mmap"); return 1; }
	pthread_t ids[64];
	struct part parts[64];
	size_t share = (size / threads + page - 1) / page * page;
	double started = now();
	for (int i = 0; i < threads; i++) {
		off_t start = (off_t)share * i;
		size_t length = start >= (off_t)size ? 0 : (size - start < share ? size - start : share);
		parts[i] = (struct part){ fd, memory, start, length, chunk, 0 };
		if (i > 0 && pthread_create(&ids[i], NULL, copy_part, &parts[i])) { perror("pthread_create"); return 1; }
	}
	copy_part(&parts[0]);
	for (int i = 1; i < threads; i++)
		pthread_join(ids[i], NULL);
	double seconds = now() - started;
	for (int i = 0; i < threads; i++)
		if (parts[i].error) { fprintf(stderr, "read: %s\n", strerror(parts[i].error)); return 1; }
	printf("{\"bytes\": %zu, \"threads\": %d, \"chunk_bytes\": %zu, \"seconds\": %.4f}\n", size, threads, chunk, seconds);
	return 0;
}
