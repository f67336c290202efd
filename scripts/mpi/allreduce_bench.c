/* The cost of the per-step all-reduce on this machine's MPI, without the training around it (docs/distributed.md):
 * MPI_Allreduce(MPI_IN_PLACE, float buffer, MPI_SUM) of each size given, timed over ITERS calls after a barrier.
 * Build and run:  mpicc -O2 -o /tmp/allreduce_bench scripts/mpi/allreduce_bench.c
 *                 mpirun -np 2 /tmp/allreduce_bench 200 8 2048 1712128
 * (arguments: iterations, then sizes in floats: 8 = the step's scalars, 2,048 = the demo's soft prompt, 1,712,128 = the
 * demo's prefix with its MLP). Prints one line per size on rank 0: floats, bytes, microseconds per call. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int iters = argc > 1 ? atoi(argv[1]) : 100;
    for (int a = 2; a < argc || a == 2; a++) {
        long n = argc > a ? atol(argv[a]) : 2048;
        float *buf = malloc(sizeof(float) * (n > 0 ? n : 1));
        for (long i = 0; i < n; i++) buf[i] = 1.0f;
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); /* warm-up */
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        for (int k = 0; k < iters; k++) MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        double dt = (MPI_Wtime() - t0) / iters;
        double worst;
        MPI_Reduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        if (rank == 0) printf("ranks %d floats %ld bytes %ld us_per_allreduce %.1f\n", size, n, n * 4, worst * 1e6);
        free(buf);
        if (argc <= 2) break;
    }
    MPI_Finalize();
    return 0;
}
