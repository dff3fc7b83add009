/*
 * A stand-in for libnvidia-ml.so.1: the MIG part of NVML, on GPUs described in a text file.
 *
 * Built by the test run (tests/node/nvml_standin/build.py) against NVIDIA's own nvml.h from the
 * nvidia-nvml-dev wheel, so every signature and struct here is the real one, and loaded by the
 * real pynvml. Only the calls cdmo's NVML backend makes are here; pynvml reports any other as
 * NVML_ERROR_FUNCTION_NOT_FOUND.
 *
 * State: the file named by $CDMO_NVML_STANDIN_STATE, read at the start of every call and
 * written back when the call changed it (under flock), so separate processes (a test and the
 * `cdmo` command it runs) see the same GPUs. One record a line (tests/node/nvml_standin/gpus.py
 * writes it):
 *
 *   serial N                        last number used for a MIG UUID (UUIDs are new on re-create)
 *   option unprivileged             every call that changes something returns NO_PERMISSION
 *   option ci-device-parent         nvmlComputeInstanceGetInfo(ci).device is the parent GPU
 *   option mig-index-by-start       nvmlDeviceGetMigDeviceHandleByIndex numbers MIG devices by
 *                                   slot, GI placement start + CI id, instead of 0, 1, ... in GI
 *                                   id then CI id order: another order than the GI ids', with
 *                                   holes (NOT_FOUND) between them, as a driver may (go-nvlib
 *                                   skips such holes and keeps the next index as it is)
 *   gpu MODEL UUID CURRENT PENDING  one GPU (index = order), MIG mode current/pending 0|1
 *   gi GPU ID PROFILE_ID START      a GPU instance
 *   ci GPU GI_ID ID PROFILE_ID UUID a compute instance (a MIG device)
 *   proc UUID PID [KIND]            a process on a GPU or MIG device; KIND is the NVML list
 *                                   that shows it: compute (the default, and what `proc UUID
 *                                   PID` has always meant), graphics or mps (an MPS client).
 *                                   Any kind keeps its compute instance: destroying it is IN_USE
 *   grow UUID N COUNT [KIND]        N processes of KIND (default compute) start on device UUID
 *                                   right after each of the next COUNT count queries (NULL
 *                                   array) of KIND's process list that list it (-1: all):
 *                                   between pynvml's two calls, so its second call gets
 *                                   INSUFFICIENT_SIZE when N exceeds its slack (count + 5)
 *   vanish UUID                     another tool destroys the compute instance of MIG device
 *                                   UUID right before the next nvmlComputeInstanceDestroy call,
 *                                   whichever instance that call names (not while a process runs
 *                                   on it, which NVML would refuse): a caller that read it before
 *                                   then destroys a stale handle, INVALID_ARGUMENT, as NVML says
 *   lost GPU                        the GPU fell off the bus: every call on it is GPU_IS_LOST
 *   xid SEQ GPU XID GI CI           the driver reported critical XID error XID on GPU (SEQ: its
 *                                   number, rising); GI CI: the MIG device it is attributed to,
 *                                   4294967295 (0xFFFFFFFF) for none (the whole GPU). An event set
 *                                   gets the records of a registered GPU with a SEQ above the
 *                                   highest one there was when it registered (nvml.h: events
 *                                   before nvmlDeviceRegisterEvents are not recorded)
 *   fault FUNCTION RC COUNT         the next COUNT calls of FUNCTION return RC (-1: all);
 *                                   nvmlDeviceGetComputeRunningProcesses@mig: only those on a
 *                                   MIG device handle (vGPU host mode refuses these, nvml.h);
 *                                   the same for nvmlDeviceGetGraphicsRunningProcesses and
 *                                   nvmlDeviceGetMPSComputeRunningProcesses (_v2 and _v3 alike)
 *
 * Process lists: nvmlDeviceGet{Compute,Graphics,MPSCompute}RunningProcesses, _v3 and _v2 of each,
 * list the processes of their kind. _v2 writes nvmlProcessInfo_v2_t (24 bytes); _v3 writes
 * nvml.h's nvmlProcessInfo_t (24 bytes too), and the library exports
 * nvmlDeviceGetRunningProcessDetailList and nvmlDeviceGetConfComputeMemSizeInfo, as drivers after
 * R535 do. Built with -DSTANDIN_R535_ROWS (build.py, r535_rows=True) it is an R535 driver
 * instead: the three _v3 write 32-byte rows (usedGpuCcProtectedMemory appended, which nvml.h
 * never declared) and there is no nvmlDeviceGetRunningProcessDetailList.
 *
 * Events: nvmlEventSetCreate, nvmlDeviceGetSupportedEventTypes (ECC and XID errors),
 * nvmlDeviceRegisterEvents (GPU handles only; a fault record makes a GPU's NOT_SUPPORTED),
 * nvmlEventSetWait_v2 (what pynvml's nvmlEventSetWait calls: it looks at the state file every
 * 20 ms until an `xid` record for it is there or the timeout passed, TIMEOUT then, and lets
 * other calls of the process run in between; GPU_IS_LOST once a registered GPU is lost) and
 * nvmlEventSetFree. The event's device is the GPU, as on a driver (nvml.h: MIG device handles
 * get no events of their own).
 *
 * What NVML does that cdmo relies on, kept here (nvml.h and NVIDIA's MIG user guide):
 * profiles are asked for by constant and answer with an id; GPU instances are created at an
 * explicit placement, INSUFFICIENT_RESOURCES where memory slices are taken; destroying a GPU
 * instance with compute instances, or a compute instance with processes, is IN_USE;
 * nvmlDeviceSetMigMode reports IN_USE and RESET_REQUIRED in its activation status; Ampere
 * needs a reset for a MIG mode change, Hopper does not.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "nvml.h"

/* --- GPU models ------------------------------------------------------------------------- */

typedef struct {
    const char *name;       /* nvidia-smi's name, for MIG device names */
    unsigned constant;      /* NVML_GPU_INSTANCE_PROFILE_* */
    unsigned id;            /* what NVML answers for the constant */
    unsigned slices;        /* compute slices */
    unsigned size;          /* memory slices: the placement size */
    unsigned count;         /* instances per GPU */
    unsigned long long mb;  /* memory */
    unsigned sms;
    unsigned starts;        /* bit s: a placement starts at memory slice s */
    unsigned cis;           /* bit c: NVML_COMPUTE_INSTANCE_PROFILE_c is offered in the GI */
} Profile;

typedef struct {
    const char *key, *product;
    unsigned pci;           /* combined device and vendor id */
    int needs_reset;        /* a MIG mode change takes effect after a GPU reset (Ampere) */
    unsigned nprofiles;
    Profile profiles[8];
} Model;

#define EVERY 0x7f    /* starts 0..6 */
#define EVEN 0x55     /* starts 0, 2, 4, 6 */
#define C(x) (1u << NVML_COMPUTE_INSTANCE_PROFILE_##x)

/* The H100's seven profiles, shared by its two models below. */
#define H100_PROFILES \
        {"1g.10gb", NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, 1, 1, 7, 9984, 16, EVERY, C(1_SLICE)}, \
        {"1g.10gb+me", NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 20, 1, 1, 1, 9984, 16, EVERY, C(1_SLICE)}, \
        {"1g.20gb", NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2, 15, 1, 2, 4, 20096, 26, EVEN, \
         C(1_SLICE) | C(1_SLICE_REV1)}, \
        {"2g.20gb", NVML_GPU_INSTANCE_PROFILE_2_SLICE, 14, 2, 2, 3, 20096, 32, 0x15, C(1_SLICE) | C(2_SLICE)}, \
        {"3g.40gb", NVML_GPU_INSTANCE_PROFILE_3_SLICE, 9, 3, 4, 2, 40448, 60, 0x11, \
         C(1_SLICE) | C(2_SLICE) | C(3_SLICE)}, \
        {"4g.40gb", NVML_GPU_INSTANCE_PROFILE_4_SLICE, 5, 4, 4, 1, 40448, 64, 0x01, \
         C(1_SLICE) | C(2_SLICE) | C(4_SLICE)}, \
        {"7g.80gb", NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0, 7, 8, 1, 81152, 132, 0x01, \
         C(1_SLICE) | C(2_SLICE) | C(3_SLICE) | C(4_SLICE) | C(7_SLICE)}

static const Model MODELS[] = {
    {"h100-80gb", "NVIDIA H100 80GB HBM3", 0x233010DE, 0, 7, {
        H100_PROFILES,
    }},
    {"a100-40gb", "NVIDIA A100-SXM4-40GB", 0x20B010DE, 1, 7, {
        {"1g.5gb", NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, 1, 1, 7, 4864, 14, EVERY, C(1_SLICE)},
        {"1g.5gb+me", NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 20, 1, 1, 1, 4864, 14, EVERY, C(1_SLICE)},
        {"1g.10gb", NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2, 15, 1, 2, 4, 9856, 14, EVEN, C(1_SLICE)},
        {"2g.10gb", NVML_GPU_INSTANCE_PROFILE_2_SLICE, 14, 2, 2, 3, 9856, 28, 0x15, C(1_SLICE) | C(2_SLICE)},
        {"3g.20gb", NVML_GPU_INSTANCE_PROFILE_3_SLICE, 9, 3, 4, 2, 19968, 42, 0x11,
         C(1_SLICE) | C(2_SLICE) | C(3_SLICE)},
        {"4g.20gb", NVML_GPU_INSTANCE_PROFILE_4_SLICE, 5, 4, 4, 1, 19968, 56, 0x01,
         C(1_SLICE) | C(2_SLICE) | C(4_SLICE)},
        {"7g.40gb", NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0, 7, 8, 1, 40192, 98, 0x01,
         C(1_SLICE) | C(2_SLICE) | C(3_SLICE) | C(4_SLICE) | C(7_SLICE)},
    }},
    /* As driver 580.159.04 answered on an H200 SXM (tests/data/nvml-probe-h200-580.json). */
    {"h200-141gb", "NVIDIA H200", 0x233510DE, 0, 7, {
        {"1g.18gb", NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, 1, 1, 7, 16384, 16, EVERY, C(1_SLICE)},
        {"1g.18gb+me", NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 20, 1, 1, 1, 16384, 16, EVERY, C(1_SLICE)},
        {"1g.35gb", NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2, 15, 1, 2, 4, 33280, 26, EVEN,
         C(1_SLICE) | C(1_SLICE_REV1)},
        {"2g.35gb", NVML_GPU_INSTANCE_PROFILE_2_SLICE, 14, 2, 2, 3, 33280, 32, 0x15, C(1_SLICE) | C(2_SLICE)},
        {"3g.71gb", NVML_GPU_INSTANCE_PROFILE_3_SLICE, 9, 3, 4, 2, 71424, 60, 0x11,
         C(1_SLICE) | C(2_SLICE) | C(3_SLICE)},
        {"4g.71gb", NVML_GPU_INSTANCE_PROFILE_4_SLICE, 5, 4, 4, 1, 71424, 64, 0x01,
         C(1_SLICE) | C(2_SLICE) | C(4_SLICE)},
        {"7g.141gb", NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0, 7, 8, 1, 143360, 132, 0x01,
         C(1_SLICE) | C(2_SLICE) | C(3_SLICE) | C(4_SLICE) | C(7_SLICE)},
    }},
    /* The H100 under a later driver that offers a profile cdmo's catalog lacks (2g.20gb+me). */
    {"h100-80gb-next", "NVIDIA H100 80GB HBM3", 0x233010DE, 0, 8, {
        H100_PROFILES,
        {"2g.20gb+me", NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1, 21, 2, 2, 1, 20096, 32, 0x15,
         C(1_SLICE) | C(2_SLICE)},
    }},
    /* A GPU without MIG: nvmlDeviceGetMigMode says NOT_SUPPORTED. */
    {"t4", "Tesla T4", 0x1EB810DE, 0, 0, {{0}}},
};

/* Compute slices of each NVML_COMPUTE_INSTANCE_PROFILE_* (nvml.h: 1, 2, 3, 4, 7, 8, 6, 1_REV1). */
static const unsigned CI_SLICES[NVML_COMPUTE_INSTANCE_PROFILE_COUNT] = {1, 2, 3, 4, 7, 8, 6, 1};

/* --- state -------------------------------------------------------------------------------- */

#define MAX_GPUS 8
#define MAX_GIS 16 /* GI ids as drivers give them: 0 full, 1-2 halves, 3-6 quarters, 7-13 eighths */
#define MAX_CIS 8
#define MAX_PROCS 64
#define MAX_FAULTS 16
#define MAX_GROWS 8
#define MAX_XIDS 64
#define MAX_VANISHES 8
#define UUID_LEN NVML_DEVICE_UUID_V2_BUFFER_SIZE

typedef struct { int used; unsigned profile; char uuid[UUID_LEN]; } Ci;
typedef struct { int used; unsigned profile, start; Ci cis[MAX_CIS]; } Gi;
typedef struct { const Model *model; char uuid[UUID_LEN]; unsigned mig, pending, lost; Gi gis[MAX_GIS]; } Gpu;
/* The process lists of NVML, by the `proc` record's KIND word. */
enum { COMPUTE_LIST, GRAPHICS_LIST, MPS_LIST, LISTS };
static const char *const LIST_KINDS[LISTS] = {"compute", "graphics", "mps"};

typedef struct { char uuid[UUID_LEN]; unsigned pid, kind; } Proc;
typedef struct { char call[UUID_LEN]; int rc, count; } Fault;
typedef struct { char uuid[UUID_LEN]; unsigned n, kind; int count; } Grow;
typedef struct { unsigned seq, gpu, xid, gi, ci; } Xid;

static struct {
    unsigned serial, ngpus, nprocs, nfaults, ngrows, nxids, xid_serial, nvanishes;
    int unprivileged, ci_device_parent, mig_index_by_start;
    Gpu gpus[MAX_GPUS];
    Proc procs[MAX_PROCS];
    Fault faults[MAX_FAULTS];
    Grow grows[MAX_GROWS];
    Xid xids[MAX_XIDS];
    char vanishes[MAX_VANISHES][UUID_LEN];
} S;

static int initialised; /* per process, as NVML's own init count */
static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER; /* S is one per process: one call at a time */
static int lock_fd = -1;
static int dirty;
static int lost_seen; /* this call named a lost GPU: INVALID_ARGUMENT becomes GPU_IS_LOST */

static const Model *find_model(const char *key) {
    for (size_t i = 0; i < sizeof MODELS / sizeof MODELS[0]; i++)
        if (strcmp(MODELS[i].key, key) == 0) return &MODELS[i];
    return NULL;
}

/* The list KIND names (compute when absent: the records written before there were kinds). */
static int list_kind(int words, int needed, const char *kind, unsigned *out) {
    if (words < needed) return *out = COMPUTE_LIST, 0;
    for (unsigned k = 0; k < LISTS; k++)
        if (strcmp(kind, LIST_KINDS[k]) == 0) return *out = k, 0;
    return -1;
}

static int parse(FILE *f) {
    char line[256], a[UUID_LEN], uuid[UUID_LEN], kind[16];
    unsigned g, gi, ci, p, x, y;
    int rc, count, words;
    memset(&S, 0, sizeof S);
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "serial %u", &x) == 1) S.serial = x;
        else if (strncmp(line, "option unprivileged", 19) == 0) S.unprivileged = 1;
        else if (strncmp(line, "option ci-device-parent", 23) == 0) S.ci_device_parent = 1;
        else if (strncmp(line, "option mig-index-by-start", 25) == 0) S.mig_index_by_start = 1;
        else if (sscanf(line, "gpu %40s %95s %u %u", a, uuid, &x, &y) == 4) {
            if (S.ngpus == MAX_GPUS || !(S.gpus[S.ngpus].model = find_model(a))) return -1;
            snprintf(S.gpus[S.ngpus].uuid, UUID_LEN, "%s", uuid);
            S.gpus[S.ngpus].mig = x, S.gpus[S.ngpus].pending = y;
            S.ngpus++;
        } else if (sscanf(line, "gi %u %u %u %u", &g, &gi, &p, &x) == 4) {
            if (g >= S.ngpus || gi >= MAX_GIS) return -1;
            S.gpus[g].gis[gi] = (Gi){1, p, x, {{0}}};
        } else if (sscanf(line, "ci %u %u %u %u %95s", &g, &gi, &ci, &p, a) == 5) {
            if (g >= S.ngpus || gi >= MAX_GIS || ci >= MAX_CIS) return -1;
            Ci *c = &S.gpus[g].gis[gi].cis[ci];
            c->used = 1, c->profile = p;
            snprintf(c->uuid, UUID_LEN, "%s", a);
        } else if (sscanf(line, "lost %u", &g) == 1) {
            if (g >= S.ngpus) return -1;
            S.gpus[g].lost = 1;
        } else if ((words = sscanf(line, "proc %95s %u %15s", a, &x, kind)) >= 2 && S.nprocs < MAX_PROCS) {
            if (list_kind(words, 3, kind, &S.procs[S.nprocs].kind) != 0) return -1;
            snprintf(S.procs[S.nprocs].uuid, UUID_LEN, "%s", a);
            S.procs[S.nprocs++].pid = x;
        } else if (sscanf(line, "fault %95s %d %d", a, &rc, &count) == 3 && S.nfaults < MAX_FAULTS) {
            snprintf(S.faults[S.nfaults].call, UUID_LEN, "%s", a);
            S.faults[S.nfaults].rc = rc, S.faults[S.nfaults++].count = count;
        } else if (sscanf(line, "xid %u %u %u %u %u", &x, &g, &y, &gi, &ci) == 5) {
            if (g >= S.ngpus) return -1;
            if (S.nxids == MAX_XIDS) memmove(S.xids, S.xids + 1, --S.nxids * sizeof S.xids[0]); /* oldest go */
            S.xids[S.nxids++] = (Xid){x, g, y, gi, ci};
            if (x > S.xid_serial) S.xid_serial = x;
        } else if ((words = sscanf(line, "grow %95s %u %d %15s", a, &x, &count, kind)) >= 3 && S.ngrows < MAX_GROWS) {
            if (list_kind(words, 4, kind, &S.grows[S.ngrows].kind) != 0) return -1;
            snprintf(S.grows[S.ngrows].uuid, UUID_LEN, "%s", a);
            S.grows[S.ngrows].n = x, S.grows[S.ngrows++].count = count;
        } else if (sscanf(line, "vanish %95s", a) == 1 && S.nvanishes < MAX_VANISHES) {
            snprintf(S.vanishes[S.nvanishes++], UUID_LEN, "%s", a);
        }
    }
    return 0;
}

static void save(void) {
    if (ftruncate(lock_fd, 0) != 0 || lseek(lock_fd, 0, SEEK_SET) != 0) return;
    FILE *f = fdopen(dup(lock_fd), "w");
    if (!f) return;
    fprintf(f, "serial %u\n", S.serial);
    if (S.unprivileged) fprintf(f, "option unprivileged\n");
    if (S.ci_device_parent) fprintf(f, "option ci-device-parent\n");
    if (S.mig_index_by_start) fprintf(f, "option mig-index-by-start\n");
    for (unsigned g = 0; g < S.ngpus; g++) {
        Gpu *gpu = &S.gpus[g];
        fprintf(f, "gpu %s %s %u %u\n", gpu->model->key, gpu->uuid, gpu->mig, gpu->pending);
        for (unsigned i = 0; i < MAX_GIS; i++) {
            if (!gpu->gis[i].used) continue;
            fprintf(f, "gi %u %u %u %u\n", g, i, gpu->gis[i].profile, gpu->gis[i].start);
            for (unsigned c = 0; c < MAX_CIS; c++)
                if (gpu->gis[i].cis[c].used)
                    fprintf(f, "ci %u %u %u %u %s\n", g, i, c, gpu->gis[i].cis[c].profile, gpu->gis[i].cis[c].uuid);
        }
    }
    for (unsigned g = 0; g < S.ngpus; g++)
        if (S.gpus[g].lost) fprintf(f, "lost %u\n", g);
    for (unsigned i = 0; i < S.nprocs; i++) /* compute as before kinds: `proc UUID PID` */
        fprintf(f, "proc %s %u%s%s\n", S.procs[i].uuid, S.procs[i].pid, S.procs[i].kind ? " " : "",
                S.procs[i].kind ? LIST_KINDS[S.procs[i].kind] : "");
    for (unsigned i = 0; i < S.nfaults; i++)
        if (S.faults[i].count != 0)
            fprintf(f, "fault %s %d %d\n", S.faults[i].call, S.faults[i].rc, S.faults[i].count);
    for (unsigned i = 0; i < S.ngrows; i++)
        if (S.grows[i].count != 0)
            fprintf(f, "grow %s %u %d%s%s\n", S.grows[i].uuid, S.grows[i].n, S.grows[i].count,
                    S.grows[i].kind ? " " : "", S.grows[i].kind ? LIST_KINDS[S.grows[i].kind] : "");
    for (unsigned i = 0; i < S.nvanishes; i++) fprintf(f, "vanish %s\n", S.vanishes[i]);
    for (unsigned i = 0; i < S.nxids; i++)
        fprintf(f, "xid %u %u %u %u %u\n", S.xids[i].seq, S.xids[i].gpu, S.xids[i].xid, S.xids[i].gi, S.xids[i].ci);
    fclose(f);
}

/* Every call: take the locks, read the state, consume an injected fault. Unless it fails, the
 * call ends with end(), which writes the state back if the call changed it. */
static nvmlReturn_t fail_begin(nvmlReturn_t rc) {
    if (lock_fd >= 0) close(lock_fd), lock_fd = -1; /* closing drops the flock */
    pthread_mutex_unlock(&mutex);
    return rc;
}

/* `quiet`: a call looking at the state again (an event wait): neither logged nor faulted. */
static nvmlReturn_t begin_as(const char *call, int quiet) {
    const char *path = getenv("CDMO_NVML_STANDIN_STATE");
    const char *log = quiet ? NULL : getenv("CDMO_NVML_STANDIN_CALLS");
    pthread_mutex_lock(&mutex);
    if (log) { /* the calls made, one a line, for tests that check the order */
        FILE *l = fopen(log, "a");
        if (l) fprintf(l, "%s\n", call), fclose(l);
    }
    if (!initialised && strcmp(call, "nvmlInit") != 0) return fail_begin(NVML_ERROR_UNINITIALIZED);
    if (!path || (lock_fd = open(path, O_RDWR)) < 0) return fail_begin(NVML_ERROR_DRIVER_NOT_LOADED);
    flock(lock_fd, LOCK_EX);
    FILE *f = fdopen(dup(lock_fd), "r");
    int bad = !f || parse(f) != 0;
    if (f) fclose(f);
    dirty = 0, lost_seen = 0;
    if (bad) {
        fprintf(stderr, "nvml stand-in: cannot read %s\n", path);
        return fail_begin(NVML_ERROR_UNKNOWN);
    }
    for (unsigned i = 0; !quiet && i < S.nfaults; i++) {
        Fault *fault = &S.faults[i];
        if (fault->count != 0 && (strcmp(fault->call, call) == 0 || strcmp(fault->call, "*") == 0)) {
            if (fault->count > 0) fault->count--;
            save();
            return fail_begin((nvmlReturn_t)fault->rc);
        }
    }
    return NVML_SUCCESS;
}

static nvmlReturn_t begin(const char *call) { return begin_as(call, 0); }

static nvmlReturn_t end(nvmlReturn_t rc) {
    if (lost_seen && rc == NVML_ERROR_INVALID_ARGUMENT) rc = NVML_ERROR_GPU_IS_LOST;
    if (dirty) save();
    close(lock_fd), lock_fd = -1;
    pthread_mutex_unlock(&mutex);
    return rc;
}

#define BEGIN(call)                              \
    do {                                         \
        nvmlReturn_t begun_ = begin(call);       \
        if (begun_ != NVML_SUCCESS) return begun_; \
    } while (0)

#define CHANGING() \
    do { if (S.unprivileged) return end(NVML_ERROR_NO_PERMISSION); } while (0)

/* --- handles: opaque pointers that encode what they name (never dereferenced) --------------
 * A handle names a place (GPU, GI id, CI id): one kept across a destroy and a create at the same
 * place names the new instance, where NVML's would be stale. The backend never keeps them. */

enum { DEVICE = 1, MIG = 2, GPU_INSTANCE = 3, COMPUTE_INSTANCE = 4 };

static void *handle(unsigned kind, unsigned gpu, unsigned gi, unsigned ci) {
    return (void *)(uintptr_t)(((uint64_t)kind << 40) | ((uint64_t)(gpu + 1) << 24) | ((gi + 1) << 12) | (ci + 1));
}

typedef struct { unsigned kind; Gpu *gpu; unsigned g; Gi *gi; unsigned i; Ci *ci; unsigned c; } Named;

/* What a handle names, if it is of `kind` and still exists; NULL gpu otherwise. */
static Named resolve(const void *h, unsigned kind) {
    uint64_t v = (uint64_t)(uintptr_t)h;
    Named n = {(unsigned)(v >> 40), NULL, (unsigned)((v >> 24) & 0xffff) - 1, NULL,
               (unsigned)((v >> 12) & 0xfff) - 1, NULL, (unsigned)(v & 0xfff) - 1};
    if (n.kind != kind || n.g >= S.ngpus) return (Named){0};
    if (S.gpus[n.g].lost) return lost_seen = 1, (Named){0};
    n.gpu = &S.gpus[n.g];
    if (kind == DEVICE) return n;
    if (n.i >= MAX_GIS || !n.gpu->gis[n.i].used) return (Named){0};
    n.gi = &n.gpu->gis[n.i];
    if (kind == GPU_INSTANCE) return n;
    if (n.c >= MAX_CIS || !n.gi->cis[n.c].used) return (Named){0};
    n.ci = &n.gi->cis[n.c];
    return n;
}

static const Profile *profile_by_id(const Gpu *gpu, unsigned id) {
    for (unsigned i = 0; i < gpu->model->nprofiles; i++)
        if (gpu->model->profiles[i].id == id) return &gpu->model->profiles[i];
    return NULL;
}

static const Profile *profile_by_constant(const Gpu *gpu, unsigned constant) {
    for (unsigned i = 0; i < gpu->model->nprofiles; i++)
        if (gpu->model->profiles[i].constant == constant) return &gpu->model->profiles[i];
    return NULL;
}

static unsigned ci_slices_used(const Gi *gi) {
    unsigned used = 0;
    for (unsigned c = 0; c < MAX_CIS; c++)
        if (gi->cis[c].used) used += CI_SLICES[gi->cis[c].profile];
    return used;
}

static int has_processes(const char *uuid) {
    for (unsigned i = 0; i < S.nprocs; i++)
        if (strcmp(S.procs[i].uuid, uuid) == 0) return 1;
    return 0;
}

static nvmlReturn_t copy_string(char *out, unsigned length, const char *text) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, text);
    return NVML_SUCCESS;
}

/* --- library ------------------------------------------------------------------------------ */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    BEGIN("nvmlInit");
    initialised++;
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&mutex);
    nvmlReturn_t rc = initialised ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
    if (initialised) initialised--;
    pthread_mutex_unlock(&mutex);
    return rc;
}

const char *nvmlErrorString(nvmlReturn_t rc) {
    switch (rc) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires reset";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Insufficient resources";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

/* --- devices ------------------------------------------------------------------------------ */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    BEGIN("nvmlDeviceGetCount");
    if (!deviceCount) return end(NVML_ERROR_INVALID_ARGUMENT);
    *deviceCount = S.ngpus;
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    BEGIN("nvmlDeviceGetHandleByIndex");
    if (!device || index >= S.ngpus) return end(NVML_ERROR_INVALID_ARGUMENT);
    if (S.gpus[index].lost) return end(NVML_ERROR_GPU_IS_LOST);
    *device = handle(DEVICE, index, 0, 0);
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    BEGIN("nvmlDeviceGetName");
    Named d = resolve(device, DEVICE), m = resolve(device, MIG);
    char text[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    if (d.gpu) snprintf(text, sizeof text, "%s", d.gpu->model->product);
    else if (m.gpu)
        snprintf(text, sizeof text, "%s MIG %s", m.gpu->model->product, profile_by_id(m.gpu, m.gi->profile)->name);
    else return end(NVML_ERROR_INVALID_ARGUMENT);
    return end(copy_string(name, length, text));
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    BEGIN("nvmlDeviceGetUUID");
    Named d = resolve(device, DEVICE), m = resolve(device, MIG);
    if (d.gpu) return end(copy_string(uuid, length, d.gpu->uuid));
    if (m.gpu) return end(copy_string(uuid, length, m.ci->uuid));
    return end(NVML_ERROR_INVALID_ARGUMENT);
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    BEGIN("nvmlDeviceGetPciInfo");
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !pci) return end(NVML_ERROR_INVALID_ARGUMENT);
    memset(pci, 0, sizeof *pci);
    pci->bus = d.g + 1;
    pci->pciDeviceId = d.gpu->model->pci;
    snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", d.g + 1);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", d.g + 1);
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode) {
    BEGIN("nvmlDeviceGetMigMode");
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !currentMode || !pendingMode) return end(NVML_ERROR_INVALID_ARGUMENT);
    if (!d.gpu->model->nprofiles) return end(NVML_ERROR_NOT_SUPPORTED);
    *currentMode = d.gpu->mig, *pendingMode = d.gpu->pending;
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceSetMigMode(nvmlDevice_t device, unsigned int mode, nvmlReturn_t *activationStatus) {
    BEGIN("nvmlDeviceSetMigMode");
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !activationStatus || mode > NVML_DEVICE_MIG_ENABLE) return end(NVML_ERROR_INVALID_ARGUMENT);
    CHANGING();
    if (!d.gpu->model->nprofiles) return end(NVML_ERROR_NOT_SUPPORTED);
    /* The driver cannot switch a GPU that is busy: instances exist or processes run on it. */
    int busy = has_processes(d.gpu->uuid);
    for (unsigned i = 0; i < MAX_GIS; i++) busy |= d.gpu->gis[i].used;
    if (busy && mode != d.gpu->mig) {
        *activationStatus = NVML_ERROR_IN_USE;
        return end(NVML_SUCCESS);
    }
    d.gpu->pending = mode, dirty = 1;
    if (d.gpu->model->needs_reset && d.gpu->mig != mode) {
        *activationStatus = NVML_ERROR_RESET_REQUIRED; /* Ampere: takes effect on a GPU reset */
        return end(NVML_SUCCESS);
    }
    d.gpu->mig = mode;
    *activationStatus = NVML_SUCCESS;
    return end(NVML_SUCCESS);
}

/* --- GPU instances ------------------------------------------------------------------------ */

static nvmlReturn_t gi_profile_info(nvmlDevice_t device, unsigned constant, nvmlGpuInstanceProfileInfo_v2_t *out) {
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !out || constant >= NVML_GPU_INSTANCE_PROFILE_COUNT) return NVML_ERROR_INVALID_ARGUMENT;
    /* nvml.h: NOT_SUPPORTED where the GPU has no MIG or lacks the profile, whatever the MIG mode. */
    const Profile *p = d.gpu->model->nprofiles ? profile_by_constant(d.gpu, constant) : NULL;
    if (!p) return NVML_ERROR_NOT_SUPPORTED;
    unsigned version = out->version;
    memset(out, 0, sizeof *out);
    out->version = version;
    out->id = p->id, out->sliceCount = p->slices, out->instanceCount = p->count;
    out->multiprocessorCount = p->sms, out->copyEngineCount = p->slices, out->memorySizeMB = p->mb;
    out->isP2pSupported = 0;
    snprintf(out->name, sizeof out->name, "MIG %s", p->name);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfo(nvmlDevice_t device, unsigned int profile,
                                                 nvmlGpuInstanceProfileInfo_t *info) {
    BEGIN("nvmlDeviceGetGpuInstanceProfileInfo");
    nvmlGpuInstanceProfileInfo_v2_t v2 = {0};
    nvmlReturn_t rc = gi_profile_info(device, profile, &v2);
    if (rc == NVML_SUCCESS && !info) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        info->id = v2.id, info->isP2pSupported = v2.isP2pSupported, info->sliceCount = v2.sliceCount;
        info->instanceCount = v2.instanceCount, info->multiprocessorCount = v2.multiprocessorCount;
        info->copyEngineCount = v2.copyEngineCount, info->memorySizeMB = v2.memorySizeMB;
        info->decoderCount = info->encoderCount = info->jpegCount = info->ofaCount = 0;
    }
    return end(rc);
}

nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfoV(nvmlDevice_t device, unsigned int profile,
                                                  nvmlGpuInstanceProfileInfo_v2_t *info) {
    BEGIN("nvmlDeviceGetGpuInstanceProfileInfo");
    if (info && info->version != nvmlGpuInstanceProfileInfo_v2) return end(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    return end(gi_profile_info(device, profile, info));
}

nvmlReturn_t nvmlDeviceGetGpuInstancePossiblePlacements_v2(nvmlDevice_t device, unsigned int profileId,
                                                           nvmlGpuInstancePlacement_t *placements,
                                                           unsigned int *count) {
    BEGIN("nvmlDeviceGetGpuInstancePossiblePlacements");
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !count) return end(NVML_ERROR_INVALID_ARGUMENT);
    const Profile *p = profile_by_id(d.gpu, profileId);
    if (!p) return end(NVML_ERROR_NOT_SUPPORTED);
    unsigned n = 0;
    for (unsigned s = 0; s < 8; s++) {
        if (!(p->starts & (1u << s))) continue;
        if (placements) placements[n] = (nvmlGpuInstancePlacement_t){s, p->size};
        n++;
    }
    *count = n; /* every placement of the profile, free or not, as NVML answers */
    return end(NVML_SUCCESS);
}

/* GI ids as drivers number them: one id per placement slot, biggest sizes first. */
static unsigned gi_id_for(const Profile *p, unsigned start) {
    switch (p->size) {
    case 8: return 0;
    case 4: return 1 + start / 4;
    case 2: return 3 + start / 2;
    default: return 7 + start;
    }
}

nvmlReturn_t nvmlDeviceCreateGpuInstanceWithPlacement(nvmlDevice_t device, unsigned int profileId,
                                                      const nvmlGpuInstancePlacement_t *placement,
                                                      nvmlGpuInstance_t *gpuInstance) {
    BEGIN("nvmlDeviceCreateGpuInstanceWithPlacement");
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !placement || !gpuInstance) return end(NVML_ERROR_INVALID_ARGUMENT);
    CHANGING();
    if (!d.gpu->mig) return end(NVML_ERROR_NOT_SUPPORTED);
    const Profile *p = profile_by_id(d.gpu, profileId);
    if (!p || placement->start >= 8 || !(p->starts & (1u << placement->start)) || placement->size != p->size)
        return end(NVML_ERROR_INVALID_ARGUMENT);
    unsigned same = 0;
    for (unsigned i = 0; i < MAX_GIS; i++) {
        const Gi *gi = &d.gpu->gis[i];
        if (!gi->used) continue;
        const Profile *q = profile_by_id(d.gpu, gi->profile);
        same += gi->profile == profileId;
        /* Memory slices [start, start+size) may not overlap. */
        if (placement->start < gi->start + q->size && gi->start < placement->start + p->size)
            return end(NVML_ERROR_INSUFFICIENT_RESOURCES);
    }
    if (same >= p->count) return end(NVML_ERROR_INSUFFICIENT_RESOURCES);
    unsigned id = gi_id_for(p, placement->start);
    d.gpu->gis[id] = (Gi){1, profileId, placement->start, {{0}}};
    dirty = 1;
    *gpuInstance = handle(GPU_INSTANCE, d.g, id, 0);
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetGpuInstances(nvmlDevice_t device, unsigned int profileId, nvmlGpuInstance_t *gpuInstances,
                                       unsigned int *count) {
    BEGIN("nvmlDeviceGetGpuInstances");
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !gpuInstances || !count) return end(NVML_ERROR_INVALID_ARGUMENT);
    if (!d.gpu->mig) return end(NVML_ERROR_NOT_SUPPORTED);
    if (!profile_by_id(d.gpu, profileId)) return end(NVML_ERROR_INVALID_ARGUMENT);
    unsigned n = 0;
    for (unsigned i = 0; i < MAX_GIS; i++)
        if (d.gpu->gis[i].used && d.gpu->gis[i].profile == profileId) gpuInstances[n++] = handle(GPU_INSTANCE, d.g, i, 0);
    *count = n;
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetGpuInstanceById(nvmlDevice_t device, unsigned int id, nvmlGpuInstance_t *gpuInstance) {
    BEGIN("nvmlDeviceGetGpuInstanceById");
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !gpuInstance) return end(NVML_ERROR_INVALID_ARGUMENT);
    if (!d.gpu->mig) return end(NVML_ERROR_NOT_SUPPORTED);
    if (id >= MAX_GIS || !d.gpu->gis[id].used) return end(NVML_ERROR_NOT_FOUND);
    *gpuInstance = handle(GPU_INSTANCE, d.g, id, 0);
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlGpuInstanceGetInfo(nvmlGpuInstance_t gpuInstance, nvmlGpuInstanceInfo_t *info) {
    BEGIN("nvmlGpuInstanceGetInfo");
    Named n = resolve(gpuInstance, GPU_INSTANCE);
    if (!n.gpu || !info) return end(NVML_ERROR_INVALID_ARGUMENT);
    info->device = handle(DEVICE, n.g, 0, 0);
    info->id = n.i, info->profileId = n.gi->profile;
    info->placement = (nvmlGpuInstancePlacement_t){n.gi->start, profile_by_id(n.gpu, n.gi->profile)->size};
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlGpuInstanceDestroy(nvmlGpuInstance_t gpuInstance) {
    BEGIN("nvmlGpuInstanceDestroy");
    Named n = resolve(gpuInstance, GPU_INSTANCE);
    if (!n.gpu) return end(NVML_ERROR_INVALID_ARGUMENT);
    CHANGING();
    for (unsigned c = 0; c < MAX_CIS; c++)
        if (n.gi->cis[c].used) return end(NVML_ERROR_IN_USE);
    n.gi->used = 0, dirty = 1;
    return end(NVML_SUCCESS);
}

/* --- compute instances -------------------------------------------------------------------- */

static nvmlReturn_t ci_profile_info(nvmlGpuInstance_t gpuInstance, unsigned constant, unsigned engine,
                                    nvmlComputeInstanceProfileInfo_v2_t *out) {
    Named n = resolve(gpuInstance, GPU_INSTANCE);
    if (!n.gpu || !out || constant >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT ||
        engine >= NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT)
        return NVML_ERROR_INVALID_ARGUMENT;
    const Profile *p = profile_by_id(n.gpu, n.gi->profile);
    if (!(p->cis & (1u << constant))) return NVML_ERROR_NOT_SUPPORTED;
    unsigned version = out->version;
    memset(out, 0, sizeof *out);
    out->version = version;
    out->id = constant; /* CI profile ids are the constants */
    out->sliceCount = CI_SLICES[constant];
    out->instanceCount = p->slices / CI_SLICES[constant];
    out->multiprocessorCount = p->sms * CI_SLICES[constant] / p->slices;
    snprintf(out->name, sizeof out->name, "MIG %uc.%s", CI_SLICES[constant], p->name);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlGpuInstanceGetComputeInstanceProfileInfo(nvmlGpuInstance_t gpuInstance, unsigned int profile,
                                                          unsigned int engProfile,
                                                          nvmlComputeInstanceProfileInfo_t *info) {
    BEGIN("nvmlGpuInstanceGetComputeInstanceProfileInfo");
    nvmlComputeInstanceProfileInfo_v2_t v2 = {0};
    nvmlReturn_t rc = ci_profile_info(gpuInstance, profile, engProfile, &v2);
    if (rc == NVML_SUCCESS && !info) rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        memset(info, 0, sizeof *info);
        info->id = v2.id, info->sliceCount = v2.sliceCount, info->instanceCount = v2.instanceCount;
        info->multiprocessorCount = v2.multiprocessorCount;
    }
    return end(rc);
}

nvmlReturn_t nvmlGpuInstanceGetComputeInstanceProfileInfoV(nvmlGpuInstance_t gpuInstance, unsigned int profile,
                                                           unsigned int engProfile,
                                                           nvmlComputeInstanceProfileInfo_v2_t *info) {
    BEGIN("nvmlGpuInstanceGetComputeInstanceProfileInfo");
    if (info && info->version != nvmlComputeInstanceProfileInfo_v2 &&
        info->version != nvmlComputeInstanceProfileInfo_v3)
        return end(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    return end(ci_profile_info(gpuInstance, profile, engProfile, info));
}

nvmlReturn_t nvmlGpuInstanceCreateComputeInstance(nvmlGpuInstance_t gpuInstance, unsigned int profileId,
                                                  nvmlComputeInstance_t *computeInstance) {
    BEGIN("nvmlGpuInstanceCreateComputeInstance");
    Named n = resolve(gpuInstance, GPU_INSTANCE);
    if (!n.gpu || !computeInstance || profileId >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT)
        return end(NVML_ERROR_INVALID_ARGUMENT);
    CHANGING();
    const Profile *p = profile_by_id(n.gpu, n.gi->profile);
    if (!(p->cis & (1u << profileId))) return end(NVML_ERROR_NOT_SUPPORTED);
    if (ci_slices_used(n.gi) + CI_SLICES[profileId] > p->slices) return end(NVML_ERROR_INSUFFICIENT_RESOURCES);
    unsigned c = 0;
    while (c < MAX_CIS && n.gi->cis[c].used) c++;
    if (c == MAX_CIS) return end(NVML_ERROR_INSUFFICIENT_RESOURCES);
    Ci *ci = &n.gi->cis[c];
    ci->used = 1, ci->profile = profileId;
    /* A new UUID every time, never one seen before on this node. */
    S.serial++;
    snprintf(ci->uuid, UUID_LEN, "MIG-5ca1ab1e-%04x-4%03x-8%03x-%012x", n.g, n.i, c, S.serial);
    dirty = 1;
    *computeInstance = handle(COMPUTE_INSTANCE, n.g, n.i, c);
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlGpuInstanceGetComputeInstances(nvmlGpuInstance_t gpuInstance, unsigned int profileId,
                                                nvmlComputeInstance_t *computeInstances, unsigned int *count) {
    BEGIN("nvmlGpuInstanceGetComputeInstances");
    Named n = resolve(gpuInstance, GPU_INSTANCE);
    if (!n.gpu || !computeInstances || !count || profileId >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT)
        return end(NVML_ERROR_INVALID_ARGUMENT);
    unsigned k = 0;
    for (unsigned c = 0; c < MAX_CIS; c++)
        if (n.gi->cis[c].used && n.gi->cis[c].profile == profileId)
            computeInstances[k++] = handle(COMPUTE_INSTANCE, n.g, n.i, c);
    *count = k;
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlComputeInstanceGetInfo_v2(nvmlComputeInstance_t computeInstance, nvmlComputeInstanceInfo_t *info) {
    BEGIN("nvmlComputeInstanceGetInfo");
    Named n = resolve(computeInstance, COMPUTE_INSTANCE);
    if (!n.gpu || !info) return end(NVML_ERROR_INVALID_ARGUMENT);
    /* Drivers give the MIG device here; NVML's reference calls it the parent device. */
    info->device = S.ci_device_parent ? handle(DEVICE, n.g, 0, 0) : handle(MIG, n.g, n.i, n.c);
    info->gpuInstance = handle(GPU_INSTANCE, n.g, n.i, 0);
    info->id = n.c, info->profileId = n.ci->profile;
    unsigned start = 0;
    for (unsigned c = 0; c < n.c; c++)
        if (n.gi->cis[c].used) start += CI_SLICES[n.gi->cis[c].profile];
    info->placement = (nvmlComputeInstancePlacement_t){start, CI_SLICES[n.ci->profile]};
    return end(NVML_SUCCESS);
}

/* `vanish` records: another tool destroys these compute instances now, between the caller's
 * read and its destroy; NVML would refuse it one with processes (IN_USE), so those stay. */
static void vanish_before_destroy(void) {
    for (unsigned v = 0; v < S.nvanishes; v++)
        for (unsigned g = 0; g < S.ngpus; g++)
            for (unsigned i = 0; i < MAX_GIS; i++)
                for (unsigned c = 0; S.gpus[g].gis[i].used && c < MAX_CIS; c++) {
                    Ci *ci = &S.gpus[g].gis[i].cis[c];
                    if (ci->used && strcmp(ci->uuid, S.vanishes[v]) == 0 && !has_processes(ci->uuid)) ci->used = 0;
                }
    if (S.nvanishes) S.nvanishes = 0, dirty = 1;
}

nvmlReturn_t nvmlComputeInstanceDestroy(nvmlComputeInstance_t computeInstance) {
    BEGIN("nvmlComputeInstanceDestroy");
    vanish_before_destroy();
    Named n = resolve(computeInstance, COMPUTE_INSTANCE); /* gone: a stale handle, INVALID_ARGUMENT */
    if (!n.gpu) return end(NVML_ERROR_INVALID_ARGUMENT);
    CHANGING();
    if (has_processes(n.ci->uuid)) return end(NVML_ERROR_IN_USE);
    n.ci->used = 0, dirty = 1;
    return end(NVML_SUCCESS);
}

/* --- MIG devices and processes ------------------------------------------------------------ */

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    BEGIN("nvmlDeviceGetMaxMigDeviceCount");
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !count) return end(NVML_ERROR_INVALID_ARGUMENT);
    if (!d.gpu->model->nprofiles) return end(NVML_ERROR_NOT_SUPPORTED);
    *count = 7;
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index, nvmlDevice_t *migDevice) {
    BEGIN("nvmlDeviceGetMigDeviceHandleByIndex");
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !migDevice || index >= 7) return end(NVML_ERROR_INVALID_ARGUMENT);
    unsigned k = 0; /* MIG devices in GI id, then CI id order; or by slot (start + CI id) */
    for (unsigned i = 0; i < MAX_GIS; i++)
        for (unsigned c = 0; d.gpu->gis[i].used && c < MAX_CIS; c++) {
            if (!d.gpu->gis[i].cis[c].used) continue;
            /* A CI id stays below its GI's compute slices, so slots never meet and stay below 7. */
            unsigned at = S.mig_index_by_start ? d.gpu->gis[i].start + c : k++;
            if (at == index) {
                *migDevice = handle(MIG, d.g, i, c);
                return end(NVML_SUCCESS);
            }
        }
    return end(NVML_ERROR_NOT_FOUND);
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id) {
    BEGIN("nvmlDeviceGetGpuInstanceId");
    Named m = resolve(device, MIG);
    if (!id) return end(NVML_ERROR_INVALID_ARGUMENT);
    if (!m.gpu) return end(resolve(device, DEVICE).gpu ? NVML_ERROR_NOT_SUPPORTED : NVML_ERROR_INVALID_ARGUMENT);
    *id = m.i;
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id) {
    BEGIN("nvmlDeviceGetComputeInstanceId");
    Named m = resolve(device, MIG);
    if (!id) return end(NVML_ERROR_INVALID_ARGUMENT);
    if (!m.gpu) return end(resolve(device, DEVICE).gpu ? NVML_ERROR_NOT_SUPPORTED : NVML_ERROR_INVALID_ARGUMENT);
    *id = m.c;
    return end(NVML_SUCCESS);
}

/* Whether a process query on GPU `gpu` (the GPU's handle when `whole`, else MIG device `ci`)
 * lists the processes of device `uuid`. */
static int lists(int whole, const Gpu *gpu, const Ci *ci, const char *uuid) {
    if (!whole) return strcmp(ci->uuid, uuid) == 0;
    if (strcmp(gpu->uuid, uuid) == 0) return 1;
    for (unsigned i = 0; i < MAX_GIS; i++)
        for (unsigned c = 0; gpu->gis[i].used && c < MAX_CIS; c++)
            if (gpu->gis[i].cis[c].used && strcmp(gpu->gis[i].cis[c].uuid, uuid) == 0) return 1;
    return 0;
}

/* `grow` records: processes start right after a count query of their list has been answered,
 * before the caller's second call (nvml.h: "the number of elements might change in time"). */
static void grow_after_count_query(unsigned kind, int whole, const Gpu *gpu, const Ci *ci) {
    for (unsigned g = 0; g < S.ngrows; g++) {
        Grow *grow = &S.grows[g];
        if (grow->count == 0 || grow->kind != kind || !lists(whole, gpu, ci, grow->uuid)) continue;
        if (grow->count > 0) grow->count--;
        for (unsigned k = 0; k < grow->n && S.nprocs < MAX_PROCS; k++) {
            snprintf(S.procs[S.nprocs].uuid, UUID_LEN, "%s", grow->uuid);
            S.procs[S.nprocs].pid = 60000 + S.nprocs;
            S.procs[S.nprocs].kind = kind;
            S.nprocs++;
        }
        dirty = 1;
    }
}

/* What _v3 writes on an R535 driver: nvml.h's row and usedGpuCcProtectedMemory. */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
    unsigned long long usedGpuCcProtectedMemory;
} R535Row;

#ifdef STANDIN_R535_ROWS
#define V3_ROWS_R535 1
#else
#define V3_ROWS_R535 0
/* Exported by drivers after R535 (what tells their 24-byte rows apart); never called by cdmo. */
nvmlReturn_t nvmlDeviceGetRunningProcessDetailList(nvmlDevice_t device, nvmlProcessDetailList_t *plist) {
    (void)device, (void)plist;
    return NVML_ERROR_NOT_SUPPORTED;
}
#endif

/* Exported by R535 and later drivers; never called by cdmo. */
nvmlReturn_t nvmlDeviceGetConfComputeMemSizeInfo(nvmlDevice_t device, nvmlConfComputeMemSizeInfo_t *memInfo) {
    (void)device, (void)memInfo;
    return NVML_ERROR_NOT_SUPPORTED;
}

/* One process list (`kind`): on a MIG device its processes of that kind; on a GPU its own and
 * those of all its MIG devices. `call`: the name faults and the call log know it by (with
 * "@mig" appended on a MIG device handle); `r535`: write R535's 32-byte rows, else
 * nvmlProcessInfo_v2_t's 24-byte ones. */
static nvmlReturn_t running_processes(const char *call, unsigned kind, int r535, nvmlDevice_t device,
                                      unsigned int *infoCount, void *infos) {
    char name[96];
    snprintf(name, sizeof name, "%s%s", call, (uint64_t)(uintptr_t)device >> 40 == MIG ? "@mig" : "");
    BEGIN(name);
    Named d = resolve(device, DEVICE), m = resolve(device, MIG);
    if ((!d.gpu && !m.gpu) || !infoCount) return end(NVML_ERROR_INVALID_ARGUMENT);
    Gpu *gpu = d.gpu ? d.gpu : m.gpu;
    unsigned n = 0;
    for (unsigned k = 0; k < S.nprocs; k++) {
        unsigned gi_id = 0xFFFFFFFF, ci_id = 0xFFFFFFFF;
        if (S.procs[k].kind != kind) continue;
        int match = d.gpu && strcmp(S.procs[k].uuid, gpu->uuid) == 0;
        for (unsigned i = 0; i < MAX_GIS; i++)
            for (unsigned c = 0; gpu->gis[i].used && c < MAX_CIS; c++)
                if (gpu->gis[i].cis[c].used && strcmp(gpu->gis[i].cis[c].uuid, S.procs[k].uuid) == 0 &&
                    (d.gpu || (i == m.i && c == m.c)))
                    match = 1, gi_id = i, ci_id = c;
        if (!match) continue;
        if (infos && n < *infoCount) {
            if (r535) ((R535Row *)infos)[n] = (R535Row){S.procs[k].pid, 0, gi_id, ci_id, 0};
            else ((nvmlProcessInfo_v2_t *)infos)[n] = (nvmlProcessInfo_v2_t){S.procs[k].pid, 0, gi_id, ci_id};
        }
        n++;
    }
    nvmlReturn_t rc = (n > *infoCount || (n && !infos)) ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
    *infoCount = n;
    if (!infos) grow_after_count_query(kind, d.gpu != NULL, gpu, m.ci);
    return end(rc);
}

/* nvml.h declares _v3 with nvmlProcessInfo_t; the _v2 only under NVML_NO_UNVERSIONED_FUNC_DEFS,
 * so they are declared here, as nvml.h does there. */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                     nvmlProcessInfo_v2_t *infos);
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                      nvmlProcessInfo_v2_t *infos);
nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,
                                                        nvmlProcessInfo_v2_t *infos);

#define PROCESS_LIST(stem, kind)                                                                          \
    nvmlReturn_t nvmlDeviceGet##stem##RunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,   \
                                                          nvmlProcessInfo_t *infos) {                     \
        return running_processes("nvmlDeviceGet" #stem "RunningProcesses", kind, V3_ROWS_R535, device,    \
                                 infoCount, infos);                                                       \
    }                                                                                                     \
    nvmlReturn_t nvmlDeviceGet##stem##RunningProcesses_v2(nvmlDevice_t device, unsigned int *infoCount,   \
                                                          nvmlProcessInfo_v2_t *infos) {                  \
        return running_processes("nvmlDeviceGet" #stem "RunningProcesses", kind, 0, device, infoCount,    \
                                 infos);                                                                  \
    }

PROCESS_LIST(Compute, COMPUTE_LIST)
PROCESS_LIST(Graphics, GRAPHICS_LIST)
PROCESS_LIST(MPSCompute, MPS_LIST)

/* --- events ------------------------------------------------------------------------------- */

#define SUPPORTED_EVENTS (nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError | nvmlEventTypeXidCriticalError)

/* An event set: per GPU, the event types registered and the last `xid` SEQ delivered (or there
 * at registration). The process's own memory, as NVML's event sets are. */
typedef struct { unsigned long long mask[MAX_GPUS]; unsigned seen[MAX_GPUS]; } EventSet;

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    BEGIN("nvmlEventSetCreate");
    if (!set) return end(NVML_ERROR_INVALID_ARGUMENT);
    EventSet *es = calloc(1, sizeof *es);
    if (!es) return end(NVML_ERROR_MEMORY);
    *set = (nvmlEventSet_t)(void *)es;
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *eventTypes) {
    BEGIN("nvmlDeviceGetSupportedEventTypes");
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !eventTypes) return end(NVML_ERROR_INVALID_ARGUMENT);
    *eventTypes = SUPPORTED_EVENTS;
    return end(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes, nvmlEventSet_t set) {
    BEGIN("nvmlDeviceRegisterEvents");
    if (resolve(device, MIG).gpu) return end(NVML_ERROR_NOT_SUPPORTED); /* no events of MIG devices */
    Named d = resolve(device, DEVICE);
    if (!d.gpu || !set || !eventTypes) return end(NVML_ERROR_INVALID_ARGUMENT);
    if (eventTypes & ~(unsigned long long)SUPPORTED_EVENTS) return end(NVML_ERROR_NOT_SUPPORTED);
    EventSet *es = (EventSet *)(void *)set;
    if (!es->mask[d.g]) es->seen[d.g] = S.xid_serial; /* earlier events are not recorded */
    es->mask[d.g] |= eventTypes;
    return end(NVML_SUCCESS);
}

static long long elapsed_ms(const struct timespec *since) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - since->tv_sec) * 1000LL + (now.tv_nsec - since->tv_nsec) / 1000000LL;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    BEGIN("nvmlEventSetWait");
    if (!set || !data) return end(NVML_ERROR_INVALID_ARGUMENT);
    EventSet *es = (EventSet *)(void *)set;
    for (;;) {
        const Xid *found = NULL;
        for (unsigned g = 0; g < S.ngpus; g++)
            if (es->mask[g] && S.gpus[g].lost) return end(NVML_ERROR_GPU_IS_LOST);
        for (unsigned i = 0; i < S.nxids; i++) {
            const Xid *x = &S.xids[i];
            if (x->gpu < MAX_GPUS && (es->mask[x->gpu] & nvmlEventTypeXidCriticalError) && x->seq > es->seen[x->gpu] &&
                (!found || x->seq < found->seq))
                found = x;
        }
        if (found) {
            es->seen[found->gpu] = found->seq;
            memset(data, 0, sizeof *data);
            data->device = handle(DEVICE, found->gpu, 0, 0); /* the GPU, with the MIG device's ids */
            data->eventType = nvmlEventTypeXidCriticalError;
            data->eventData = found->xid;
            data->gpuInstanceId = found->gi, data->computeInstanceId = found->ci;
            return end(NVML_SUCCESS);
        }
        end(NVML_SUCCESS); /* let other calls of this process, and other processes, run */
        if (elapsed_ms(&started) >= (long long)timeoutms) return NVML_ERROR_TIMEOUT;
        usleep(20000);
        nvmlReturn_t rc = begin_as("nvmlEventSetWait", 1);
        if (rc != NVML_SUCCESS) return rc;
    }
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    BEGIN("nvmlEventSetFree");
    if (!set) return end(NVML_ERROR_INVALID_ARGUMENT);
    free((void *)set);
    return end(NVML_SUCCESS);
}
