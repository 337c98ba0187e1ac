/*
 * The data path of perf/native_load.py: NVMe/TCP I/O queues driven closed-loop at a fixed
 * depth by one busy-polling thread, as spdk_nvme_perf drives them.
 *
 * Python does the bring-up (ICReq, Fabrics Connect of the admin and I/O queues, enabling the
 * controller) with the target.host initiator and hands this program the connected I/O queue
 * sockets (inherited descriptors). From then on this program owns them: it keeps `qd` reads,
 * writes or Flushes in flight per queue, answers R2Ts with H2CData, checks every completion's
 * status, and records each I/O's latency. Digests are off and CPDA/HPDA 0, as the Python fast
 * engine (perf/fastload.py) requires too; the same commands, in the same order for a seed's
 * random stream, are not promised (the random generator differs).
 *
 * Why it exists: the Python load engines spend 5-12 us of CPU per I/O, on the core next to
 * the target's, between a completion and the next command. The issue's yardstick initiator
 * (spdk_nvme_perf) spends about 1. Measured from this side, the target is then charged only
 * for its own work.
 *
 * Arguments, key=value: fds=3,4 nsid= block= bs= qd= (per queue) mode=read|write|mix
 * readpct= seq=0|1 span= (blocks) seconds= maxios= (per queue) seed= incapsule=0|1
 * maxh2cdata= flushevery=. Write data (bs bytes) comes on stdin.
 * Output on stdout, little-endian: "NVLD", int64 ios, errors, issued, elapsed_ns, count, then
 * `count` int64 latencies in ns. Exit status 0, or 2 with a message on stderr (the queue
 * failed: closed, a protocol error, no progress for 30 s).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum {
    T_CAPSULE_CMD = 0x04, T_CAPSULE_RESP = 0x05, T_H2C_DATA = 0x06, T_C2H_DATA = 0x07,
    T_R2T = 0x09,
    F_LAST = 0x04, F_SUCCESS = 0x08,
    CAPSULE_HLEN = 72, DATA_HLEN = 24, RESP_PLEN = 24,
    OP_FLUSH = 0x00, OP_WRITE = 0x01, OP_READ = 0x02,
    SGL_INCAPSULE = 0x01, SGL_TRANSPORT = 0x5A,
    MAX_IOV = 512,
};
#define STALL_NS (30ull * 1000000000ull) /* no byte received for this long: give up */

struct opts {
    int fds[64];
    int nfds;
    uint32_t nsid, block, bs, qd, readpct, incapsule, maxh2cdata, flushevery;
    int mode; /* 0 read, 1 write, 2 mix */
    int seq;
    uint64_t span, maxios, seed;
    double seconds;
};

struct queue {
    int fd;
    uint8_t *rbuf;
    size_t start, end, cap, max_pdu;
    uint8_t *rd_tpl, *wr_tpl, *fl_tpl; /* CAPSULE_HLEN bytes per cid */
    uint64_t *sent_at;
    uint64_t rng, next_slot, span, nblocks;
    uint64_t issued, ios, errors, max_ios;
    int stopping, done;
    uint64_t last_rx;
    /* what one pass sends */
    struct iovec iov[MAX_IOV];
    int niov;
    uint8_t *arena; /* H2CData headers of one pass */
    size_t arena_used, arena_cap;
};

static const struct opts *O;
static uint8_t *payload;
static int64_t *lat;
static size_t nlat, lat_cap;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "nvmf_load: %s\n", what);
    exit(2);
}

static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static void wr16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static uint64_t next_random(struct queue *q) /* xorshift64* */
{
    q->rng ^= q->rng >> 12;
    q->rng ^= q->rng << 25;
    q->rng ^= q->rng >> 27;
    return q->rng * 2685821657736338717ull;
}

static void *alloc_or_die(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p)
        die("out of memory");
    return p;
}

/* One capsule per cid: common header and SQE, all but CID and SLBA fixed. */
static uint8_t *templates(const struct queue *q, int opcode, int in_capsule)
{
    uint8_t *t = alloc_or_die((size_t)O->qd * CAPSULE_HLEN);
    uint32_t data_len = in_capsule ? O->bs : 0;
    for (uint32_t cid = 0; cid < O->qd; cid++) {
        uint8_t *c = t + (size_t)cid * CAPSULE_HLEN;
        c[0] = T_CAPSULE_CMD;
        c[2] = CAPSULE_HLEN;
        c[3] = in_capsule ? CAPSULE_HLEN : 0;
        wr32(c + 4, CAPSULE_HLEN + data_len);
        uint8_t *sqe = c + 8;
        sqe[0] = (uint8_t)opcode;
        sqe[1] = 0x40; /* PSDT: SGL */
        wr16(sqe + 2, (uint16_t)cid);
        wr32(sqe + 4, O->nsid);
        if (opcode != OP_FLUSH) {
            wr32(sqe + 32, O->bs); /* SGL length; address 0 */
            sqe[39] = in_capsule ? SGL_INCAPSULE : SGL_TRANSPORT;
            wr32(sqe + 48, (uint32_t)(q->nblocks - 1));
        }
    }
    return t;
}

static void flush_out(struct queue *q)
{
    struct iovec *iov = q->iov;
    int n = q->niov;
    uint64_t deadline = now_ns() + STALL_NS;
    while (n > 0) {
        ssize_t sent = writev(q->fd, iov, n > IOV_MAX ? IOV_MAX : n);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                if (now_ns() > deadline)
                    die("the target stopped taking data");
                continue;
            }
            die("send failed");
        }
        while (n > 0 && (size_t)sent >= iov->iov_len) {
            sent -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0 && sent > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + sent;
            iov->iov_len -= (size_t)sent;
        }
    }
    q->niov = 0;
    q->arena_used = 0;
}

static void add_iov(struct queue *q, const void *base, size_t len)
{
    if (q->niov == MAX_IOV)
        flush_out(q);
    q->iov[q->niov].iov_base = (void *)base;
    q->iov[q->niov].iov_len = len;
    q->niov++;
}

static void issue(struct queue *q, uint16_t cid)
{
    uint8_t *c;
    int write = O->mode == 1;
    if (O->flushevery && q->issued % (O->flushevery + 1) == O->flushevery) {
        c = q->fl_tpl + (size_t)cid * CAPSULE_HLEN;
        q->sent_at[cid] = now_ns();
        q->issued++;
        add_iov(q, c, CAPSULE_HLEN);
        return;
    }
    if (O->mode == 2)
        write = (next_random(q) % 100) >= O->readpct;
    c = (write ? q->wr_tpl : q->rd_tpl) + (size_t)cid * CAPSULE_HLEN;
    uint64_t slot;
    if (O->seq) {
        slot = q->next_slot;
        q->next_slot = (slot + 1) % q->span;
    } else {
        slot = next_random(q) % q->span;
    }
    wr64(c + 8 + 40, slot * q->nblocks);
    q->sent_at[cid] = now_ns();
    q->issued++;
    add_iov(q, c, CAPSULE_HLEN);
    if (write && O->incapsule)
        add_iov(q, payload, O->bs);
}

/* Answer an R2T with H2CData PDUs of at most MAXH2CDATA carrying the range it asks for. */
static void send_data(struct queue *q, const uint8_t *r2t)
{
    uint16_t cccid = rd16(r2t + 8), ttag = rd16(r2t + 10);
    uint32_t off = rd32(r2t + 12), end = off + rd32(r2t + 16);
    if (end > O->bs || end < off) {
        q->errors++;
        q->stopping = 1;
        return;
    }
    while (off < end) {
        uint32_t n = end - off < O->maxh2cdata ? end - off : O->maxh2cdata;
        /* room for the header and both iovecs first: a flush inside add_iov would free the
         * arena slot of a header not yet sent */
        if (q->arena_used + DATA_HLEN > q->arena_cap || q->niov + 2 > MAX_IOV)
            flush_out(q);
        uint8_t *h = q->arena + q->arena_used;
        q->arena_used += DATA_HLEN;
        memset(h, 0, DATA_HLEN);
        h[0] = T_H2C_DATA;
        h[1] = off + n == end ? F_LAST : 0;
        h[2] = DATA_HLEN;
        h[3] = DATA_HLEN;
        wr32(h + 4, DATA_HLEN + n);
        wr16(h + 8, cccid);
        wr16(h + 10, ttag);
        wr32(h + 12, off);
        wr32(h + 16, n);
        add_iov(q, h, DATA_HLEN);
        add_iov(q, payload + off, n);
        off += n;
    }
}

static void complete(struct queue *q, uint16_t cid, int keep_going)
{
    if (cid >= O->qd) {
        q->errors++;
        q->stopping = 1;
        return;
    }
    if (nlat == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 1 << 20;
        lat = realloc(lat, lat_cap * sizeof *lat);
        if (!lat)
            die("out of memory");
    }
    lat[nlat++] = (int64_t)(now_ns() - q->sent_at[cid]);
    q->ios++;
    if (keep_going && q->issued < q->max_ios)
        issue(q, cid);
}

static void process(struct queue *q, uint64_t stop_at)
{
    uint8_t *b = q->rbuf;
    size_t pos = q->start, end = q->end;
    int keep_going = !q->stopping;
    while (end - pos >= 8) {
        uint8_t type = b[pos], flags = b[pos + 1];
        uint32_t plen = rd32(b + pos + 4);
        if (plen < 8 || plen > q->max_pdu)
            die("a PDU with an impossible length");
        if (end - pos < plen)
            break;
        if (type == T_CAPSULE_RESP && plen >= RESP_PLEN) {
            if (rd16(b + pos + 8 + 14) & 0xFFFE)
                q->errors++;
            complete(q, rd16(b + pos + 8 + 12), keep_going);
        } else if (type == T_C2H_DATA && plen >= DATA_HLEN) {
            if (flags & F_SUCCESS)
                complete(q, rd16(b + pos + 8), keep_going);
            /* otherwise the CapsuleResp that follows completes it */
        } else if (type == T_R2T && plen >= DATA_HLEN && O->mode != 0 && !O->incapsule) {
            send_data(q, b + pos);
        } else {
            q->errors++;
            q->stopping = 1;
        }
        pos += plen;
    }
    if (pos == end)
        pos = end = 0;
    else if (q->cap - end < q->max_pdu) {
        memmove(b, b + pos, end - pos);
        end -= pos;
        pos = 0;
    }
    q->start = pos;
    q->end = end;
    if (q->niov) {
        if (now_ns() >= stop_at)
            q->stopping = 1;
        flush_out(q);
    }
    if (q->ios >= q->issued)
        q->done = 1;
}

static uint64_t parse_u64(const char *v)
{
    char *endp;
    errno = 0;
    unsigned long long x = strtoull(v, &endp, 10);
    if (errno || *endp || endp == v)
        die("a number was expected");
    return x;
}

static void parse(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof *o);
    o->maxh2cdata = 1 << 20;
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            die("arguments are key=value");
        *eq = 0;
        const char *k = argv[i], *v = eq + 1;
        if (!strcmp(k, "fds")) {
            char *s = strdup(v), *save = NULL;
            for (char *t = strtok_r(s, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (o->nfds == 64)
                    die("at most 64 queues");
                o->fds[o->nfds++] = (int)parse_u64(t);
            }
            free(s);
        } else if (!strcmp(k, "nsid")) o->nsid = (uint32_t)parse_u64(v);
        else if (!strcmp(k, "block")) o->block = (uint32_t)parse_u64(v);
        else if (!strcmp(k, "bs")) o->bs = (uint32_t)parse_u64(v);
        else if (!strcmp(k, "qd")) o->qd = (uint32_t)parse_u64(v);
        else if (!strcmp(k, "readpct")) o->readpct = (uint32_t)parse_u64(v);
        else if (!strcmp(k, "incapsule")) o->incapsule = (uint32_t)parse_u64(v);
        else if (!strcmp(k, "maxh2cdata")) o->maxh2cdata = (uint32_t)parse_u64(v);
        else if (!strcmp(k, "flushevery")) o->flushevery = (uint32_t)parse_u64(v);
        else if (!strcmp(k, "seq")) o->seq = (int)parse_u64(v);
        else if (!strcmp(k, "span")) o->span = parse_u64(v);
        else if (!strcmp(k, "maxios")) o->maxios = parse_u64(v);
        else if (!strcmp(k, "seed")) o->seed = parse_u64(v);
        else if (!strcmp(k, "seconds")) o->seconds = strtod(v, NULL);
        else if (!strcmp(k, "mode")) {
            if (!strcmp(v, "read")) o->mode = 0;
            else if (!strcmp(v, "write")) o->mode = 1;
            else if (!strcmp(v, "mix")) o->mode = 2;
            else die("mode is read, write or mix");
        } else
            die("an unknown argument");
    }
    if (!o->nfds || !o->nsid || !o->block || !o->bs || o->bs % o->block || !o->qd
        || o->qd > 65536 || !o->maxh2cdata || o->readpct > 100 || o->seconds <= 0)
        die("missing or impossible arguments");
}

static void read_payload(void)
{
    payload = alloc_or_die(O->bs);
    if (O->mode == 0)
        return;
    size_t got = 0;
    while (got < O->bs) {
        ssize_t n = read(0, payload + got, O->bs - got);
        if (n <= 0)
            die("the write data (bs bytes) must come on stdin");
        got += (size_t)n;
    }
}

static void write_all(const void *p, size_t n)
{
    const uint8_t *c = p;
    while (n) {
        ssize_t w = write(1, c, n);
        if (w <= 0)
            die("writing the results");
        c += w;
        n -= (size_t)w;
    }
}

int main(int argc, char **argv)
{
    static struct opts opts;
    parse(argc, argv, &opts);
    O = &opts;
    read_payload();
    int nq = O->nfds;
    struct queue *qs = alloc_or_die(sizeof(struct queue) * (size_t)nq);
    uint64_t nblocks = O->bs / O->block;
    uint64_t span = O->span / nblocks ? O->span / nblocks : 1;
    for (int i = 0; i < nq; i++) {
        struct queue *q = &qs[i];
        q->fd = O->fds[i];
        q->nblocks = nblocks;
        q->span = span;
        q->max_pdu = (size_t)O->bs + 4096;
        q->cap = q->max_pdu * 2 > (4u << 20) ? q->max_pdu * 2 : (4u << 20);
        q->rbuf = alloc_or_die(q->cap);
        q->rd_tpl = templates(q, OP_READ, 0);
        q->wr_tpl = templates(q, OP_WRITE, (int)O->incapsule);
        q->fl_tpl = templates(q, OP_FLUSH, 0);
        q->sent_at = alloc_or_die(sizeof(uint64_t) * O->qd);
        q->rng = (O->seed + (uint64_t)i) * 0x9E3779B97F4A7C15ull | 1;
        q->next_slot = ((O->seed + (uint64_t)i) * 7919) % span; /* queues start apart */
        q->max_ios = O->maxios / (uint64_t)nq;
        q->arena_cap = DATA_HLEN * (MAX_IOV / 2);
        q->arena = alloc_or_die(q->arena_cap);
    }
    uint64_t t0 = now_ns();
    uint64_t stop_at = t0 + (uint64_t)(O->seconds * 1e9);
    for (int i = 0; i < nq; i++) {
        struct queue *q = &qs[i];
        q->last_rx = t0;
        for (uint32_t cid = 0; cid < O->qd && q->issued < q->max_ios; cid++)
            issue(q, (uint16_t)cid);
        flush_out(q);
        if (!q->issued)
            q->done = 1;
    }
    int left = 0;
    for (int i = 0; i < nq; i++)
        left += !qs[i].done;
    uint64_t spins = 0;
    while (left) {
        for (int i = 0; i < nq; i++) {
            struct queue *q = &qs[i];
            if (q->done)
                continue;
            ssize_t n = recv(q->fd, q->rbuf + q->end, q->cap - q->end, MSG_DONTWAIT);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR) {
                    if (!(++spins & 0xFFF) && now_ns() - q->last_rx > STALL_NS)
                        die("no answer from the target for 30 s");
                    continue;
                }
                die("receive failed");
            }
            if (n == 0)
                die("the target closed an I/O queue");
            q->end += (size_t)n;
            q->last_rx = now_ns();
            process(q, stop_at);
            if (q->done)
                left--;
        }
    }
    uint64_t elapsed = now_ns() - t0;
    int64_t head[5] = {0, 0, 0, (int64_t)elapsed, (int64_t)nlat};
    for (int i = 0; i < nq; i++) {
        head[0] += (int64_t)qs[i].ios;
        head[1] += (int64_t)qs[i].errors;
        head[2] += (int64_t)qs[i].issued;
    }
    write_all("NVLD", 4);
    write_all(head, sizeof head);
    write_all(lat, nlat * sizeof *lat);
    return 0;
}
