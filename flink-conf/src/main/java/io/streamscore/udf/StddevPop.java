package io.streamscore.udf;

import org.apache.flink.table.functions.AggregateFunction;

/**
 * Population standard deviation with Welford updates and Chan et al. merges, so the
 * result does not suffer the cancellation of the sum-of-squares formula that Flink's
 * STDDEV_POP is rewritten to. The same algorithm runs in
 * {@code transforms.aggregates.GroupAggregator}, so Flink, Beam and the reference agree
 * to rounding (and exactly on constant inputs, which give 0).
 */
public class StddevPop extends AggregateFunction<Double, StddevPop.Acc> {
    private static final long serialVersionUID = 1L;

    /** Count, running mean and sum of squared deviations. */
    public static class Acc {
        public long n;
        public double mean;
        public double m2;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    public void accumulate(Acc acc, Double x) {
        if (x == null) {
            return;
        }
        acc.n += 1;
        double d = x - acc.mean;
        acc.mean += d / acc.n;
        acc.m2 += d * (x - acc.mean);
    }

    public void merge(Acc acc, Iterable<Acc> others) {
        for (Acc b : others) {
            if (b.n == 0) {
                continue;
            }
            if (acc.n == 0) {
                acc.n = b.n;
                acc.mean = b.mean;
                acc.m2 = b.m2;
                continue;
            }
            long n = acc.n + b.n;
            double d = b.mean - acc.mean;
            acc.mean += d * b.n / n;
            acc.m2 += b.m2 + d * d * ((double) acc.n * b.n / n);
            acc.n = n;
        }
    }

    @Override
    public Double getValue(Acc acc) {
        if (acc.n == 0) {
            return null;
        }
        return Math.sqrt(Math.max(acc.m2 / acc.n, 0.0));
    }
}
