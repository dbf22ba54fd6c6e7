package io.streamscore.udf;

import java.util.HashMap;
import java.util.Map;

import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * Identity on a dead-letter reason that counts it: one counter per reason,
 * {@code streamscore_reason_dead_letters{reason="..."}} in Prometheus. Called on the
 * dead-letter path only, so it costs nothing per good event.
 */
public class CountReason extends ScalarFunction {
    private static final long serialVersionUID = 1L;

    private transient MetricGroup group;
    private transient Map<String, Counter> counters;

    @Override
    public void open(FunctionContext context) {
        group = context.getMetricGroup().addGroup("streamscore");
        counters = new HashMap<>();
    }

    /** Not deterministic: a call on a literal must not be folded away at planning time. */
    @Override
    public boolean isDeterministic() {
        return false;
    }

    public String eval(String reason) {
        if (reason != null && counters != null) {
            counters.computeIfAbsent(reason, r -> group.addGroup("reason", r).counter("dead_letters")).inc();
        }
        return reason;
    }
}
