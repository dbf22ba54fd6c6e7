package io.streamscore.udf;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.List;
import org.apache.flink.avro.shaded.org.apache.avro.Schema;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * Decodes and validates one schemaless Avro interaction event inside the JVM, so no
 * per-event Python runs in the Flink job.
 *
 * <p>Returns a row whose {@code reason} is null for a good event, or one of the
 * dead-letter reasons of {@code transforms.codecs.DeadLetterReason} for a bad one. Bytes
 * are read under the strict rule of {@link StrictAvro} (the twin of {@code
 * transforms/event_decoder.py}); the validation mirrors {@code
 * transforms.codecs.validate_event}. A cross-engine test feeds both one malformed corpus
 * ({@link DecodeCorpus}) and compares verdicts, reasons and details.
 *
 * <p>Arguments: the raw value, the writer and reader schema file names (bundled from
 * {@code schemas/} at build time), and the validation limits. Everything comes in the
 * call, so every instance (projections and the pushed-down watermark generator alike)
 * applies the same rules without job parameters, which the watermark generator cannot
 * read.
 *
 * <p>Schema evolution: the second overload takes the record's {@code schema-version}
 * Kafka header (null when absent: version 1) and the known writer schemas as a literal
 * {@code "1=event.v1.avsc,2=event.v2.avsc"}, and reads every writer with the reader
 * schema by Avro resolution. A header that is not a decimal version, or names a version
 * not in that list, gives the reason {@code unknown_schema_version} (the header is
 * checked before the value). Mirrors {@code transforms.codecs.try_decode_event}.
 *
 * <p>The planner inlines the decoded column into every projection that reads a field of
 * it, in every chained operator. A per-thread cache of the last input therefore makes all
 * those calls for one record share a single decode; the result is an internal {@link
 * RowData}, so a cache hit costs a byte comparison and no conversion. The function is
 * deterministic, so equal bytes may share a result.
 */
@FunctionHint(
        output =
                @DataTypeHint(
                        value =
                                "ROW<event_id STRING, user_id STRING, item_id STRING,"
                                        + " ts_ms BIGINT, event_type STRING, dwell_ms DOUBLE,"
                                        + " device STRING, region STRING,"
                                        + " item_category STRING, reason STRING,"
                                        + " detail STRING>",
                        bridgedTo = RowData.class))
public class DecodeEvent extends ScalarFunction {
    private static final long serialVersionUID = 1L;
    private static final int FIELDS = 11;
    private static final int REASON = 9;
    private static final int DETAIL = 10;
    /** Output slots: the reader's fields, in the order of the result row. */
    static final List<String> LAYOUT = List.of(
            "event_id", "user_id", "item_id", "ts_ms", "event_type", "dwell_ms", "device", "region",
            "item_category");
    /** item_category, device, region: bounded like keys, may be empty (transforms.codecs.BOUNDED_STRINGS). */
    private static final int[] BOUNDED_STRINGS = {8, 6, 7};
    /** Longest accepted version header: nine digits. */
    private static final int MAX_VERSION_DIGITS = 9;

    /** Per thread: readers by schema pair, and the last input with its result. */
    private static final class State {
        final Map<String, StrictAvro.RecordPlan> plans = new HashMap<>();
        byte[] lastValue;
        byte[] lastVersionHeader;
        boolean lastWithHeader; // which overload produced the last result
        String lastWriter;
        String lastReader;
        String writerListText;
        Map<String, String> writerList;
        int lastMaxKeyBytes;
        long lastMinTsMs;
        long lastMaxTsMs;
        double lastMinDwellMs;
        double lastMaxDwellMs;
        RowData lastResult;
    }

    private static final ThreadLocal<State> STATE = ThreadLocal.withInitial(State::new);

    /** Loads {@code schemas/<name>} bundled in this jar from the project's schemas folder. */
    static Schema loadSchema(String name) {
        try (java.io.InputStream in =
                DecodeEvent.class.getResourceAsStream("/schemas/" + name)) {
            if (in == null) {
                throw new IllegalArgumentException(
                        "schema resource schemas/" + name + " not in jar");
            }
            return new Schema.Parser().parse(in);
        } catch (java.io.IOException exc) {
            throw new IllegalStateException("cannot read schema " + name, exc);
        }
    }

    static RowData bad(String reason, String detail) {
        GenericRowData row = new GenericRowData(FIELDS);
        row.setField(REASON, StringData.fromString(reason));
        row.setField(DETAIL, StringData.fromString(detail));
        return row;
    }

    private static String keyProblem(String name, Object value, int maxKeyBytes) {
        int n = StrictAvro.utf8Length(value);
        if (n == 0) {
            return name + " is empty";
        }
        if (n > maxKeyBytes) {
            return name + " longer than " + maxKeyBytes + " bytes";
        }
        return null;
    }

    /** Parses {@code "1=event.v1.avsc,2=event.v2.avsc"}: version text to schema file. */
    private static Map<String, String> parseWriterList(String text) {
        Map<String, String> out = new HashMap<>();
        for (String part : text.split(",")) {
            int eq = part.indexOf('=');
            if (eq <= 0 || eq == part.length() - 1) {
                throw new IllegalArgumentException("bad writer schema list entry '" + part + "' in '" + text + "'");
            }
            out.put(part.substring(0, eq).trim(), part.substring(eq + 1).trim());
        }
        return out;
    }

    /** The header's version text, or null when it is not 1 to 9 ASCII digits without a leading zero. */
    private static String versionText(byte[] header) {
        if (header.length == 0 || header.length > MAX_VERSION_DIGITS || header[0] == '0') {
            return null;
        }
        for (byte b : header) {
            if (b < '0' || b > '9') {
                return null;
            }
        }
        return new String(header, StandardCharsets.US_ASCII);
    }

    /** Printable, bounded rendering of a bad header for the dead letter's detail. */
    private static String describeHeader(byte[] header) {
        StringBuilder sb = new StringBuilder();
        int n = Math.min(header.length, 32);
        for (int i = 0; i < n; i++) {
            int b = header[i] & 0xFF;
            if (b >= 0x20 && b < 0x7F && b != '\\') {
                sb.append((char) b);
            } else {
                sb.append(String.format("\\x%02x", b));
            }
        }
        if (header.length > n) {
            sb.append("...");
        }
        return sb.toString();
    }

    /**
     * Decodes a record whose writer schema is named by its {@code schema-version} header
     * ({@code versionHeader}, null: version 1) among {@code writerSchemas}, read with
     * {@code readerSchema}. The cache key includes the header, so equal bytes written
     * with different schemas never share a result.
     */
    public RowData eval(
            byte[] value,
            byte[] versionHeader,
            String writerSchemas,
            String readerSchema,
            Integer maxKeyBytes,
            Long minTsMs,
            Long maxTsMs,
            Double minDwellMs,
            Double maxDwellMs) {
        State st = STATE.get();
        if (st.lastValue != null
                && st.lastWithHeader
                && (value == st.lastValue || Arrays.equals(value, st.lastValue))
                && Arrays.equals(versionHeader, st.lastVersionHeader)
                && sameLimits(st, maxKeyBytes, minTsMs, maxTsMs, minDwellMs, maxDwellMs)
                && writerSchemas.equals(st.lastWriter)
                && readerSchema.equals(st.lastReader)) {
            return st.lastResult;
        }
        if (st.writerList == null || !writerSchemas.equals(st.writerListText)) {
            st.writerList = parseWriterList(writerSchemas);
            st.writerListText = writerSchemas;
        }
        RowData result;
        String version = versionHeader == null ? "1" : versionText(versionHeader);
        String writerSchema = version == null ? null : st.writerList.get(version);
        if (version == null) {
            result = bad("unknown_schema_version",
                    "schema-version header '" + describeHeader(versionHeader) + "' is not a decimal version");
        } else if (writerSchema == null) {
            result = bad("unknown_schema_version",
                    "schema-version " + version + " is not a known event schema (known: "
                            + String.join(", ", new java.util.TreeSet<>(st.writerList.keySet())) + ")");
        } else {
            result = decode(plan(st, writerSchema, readerSchema), value, maxKeyBytes, minTsMs, maxTsMs,
                    minDwellMs, maxDwellMs);
        }
        remember(st, value, versionHeader, true, writerSchemas, readerSchema, maxKeyBytes, minTsMs, maxTsMs,
                minDwellMs, maxDwellMs, result);
        return result;
    }

    /** One fixed writer schema (no version header). */
    public RowData eval(
            byte[] value,
            String writerSchema,
            String readerSchema,
            Integer maxKeyBytes,
            Long minTsMs,
            Long maxTsMs,
            Double minDwellMs,
            Double maxDwellMs) {
        State st = STATE.get();
        if (st.lastValue != null
                && !st.lastWithHeader
                && (value == st.lastValue || Arrays.equals(value, st.lastValue))
                && sameLimits(st, maxKeyBytes, minTsMs, maxTsMs, minDwellMs, maxDwellMs)
                && writerSchema.equals(st.lastWriter)
                && readerSchema.equals(st.lastReader)) {
            return st.lastResult;
        }
        RowData result = decode(plan(st, writerSchema, readerSchema), value, maxKeyBytes, minTsMs, maxTsMs,
                minDwellMs, maxDwellMs);
        remember(st, value, null, false, writerSchema, readerSchema, maxKeyBytes, minTsMs, maxTsMs,
                minDwellMs, maxDwellMs, result);
        return result;
    }

    private static boolean sameLimits(
            State st, int maxKeyBytes, long minTsMs, long maxTsMs, double minDwellMs, double maxDwellMs) {
        return maxKeyBytes == st.lastMaxKeyBytes
                && minTsMs == st.lastMinTsMs
                && maxTsMs == st.lastMaxTsMs
                && minDwellMs == st.lastMinDwellMs
                && maxDwellMs == st.lastMaxDwellMs;
    }

    private static void remember(
            State st, byte[] value, byte[] versionHeader, boolean withHeader, String writer, String reader,
            int maxKeyBytes, long minTsMs, long maxTsMs, double minDwellMs, double maxDwellMs, RowData result) {
        st.lastValue = value;
        st.lastVersionHeader = versionHeader;
        st.lastWithHeader = withHeader;
        st.lastWriter = writer;
        st.lastReader = reader;
        st.lastMaxKeyBytes = maxKeyBytes;
        st.lastMinTsMs = minTsMs;
        st.lastMaxTsMs = maxTsMs;
        st.lastMinDwellMs = minDwellMs;
        st.lastMaxDwellMs = maxDwellMs;
        st.lastResult = result;
    }

    private static StrictAvro.RecordPlan plan(State st, String writerSchema, String readerSchema) {
        return st.plans.computeIfAbsent(
                writerSchema + '|' + readerSchema,
                k -> StrictAvro.compile(loadSchema(writerSchema), loadSchema(readerSchema), LAYOUT));
    }

    /** Decode and validate one value with a compiled plan (also used by {@link DecodeCorpus}). */
    static RowData decode(
            StrictAvro.RecordPlan plan,
            byte[] value,
            int maxKeyBytes,
            long minTsMs,
            long maxTsMs,
            double minDwellMs,
            double maxDwellMs) {
        if (value == null || value.length == 0) {
            return bad("undecodable", "empty value");
        }
        Object[] slots = new Object[FIELDS];
        try {
            plan.decode(value, slots);
        } catch (StrictAvro.DecodeException exc) {
            return bad("undecodable", exc.getMessage());
        }
        for (int i = 0; i < 3; i++) {
            String problem = keyProblem(LAYOUT.get(i), slots[i], maxKeyBytes);
            if (problem != null) {
                return bad("invalid_key", problem);
            }
        }
        for (int i : BOUNDED_STRINGS) { // may be empty (or null), never longer than a key
            if (StrictAvro.utf8Length(slots[i]) > maxKeyBytes) {
                return bad("invalid_key", LAYOUT.get(i) + " longer than " + maxKeyBytes + " bytes");
            }
        }
        long tsMs = ((Number) slots[3]).longValue();
        if (tsMs < minTsMs || tsMs > maxTsMs) {
            return bad(
                    "invalid_timestamp",
                    "ts_ms " + tsMs + " outside [" + minTsMs + ", " + maxTsMs + "]");
        }
        double dwellMs = ((Number) slots[5]).doubleValue();
        if (!(dwellMs >= minDwellMs && dwellMs <= maxDwellMs)) { // false for NaN
            return bad("invalid_dwell", "dwell_ms " + dwellMs + " outside [" + minDwellMs + ", " + maxDwellMs + "]");
        }
        GenericRowData row = new GenericRowData(FIELDS);
        for (int i = 0; i < LAYOUT.size(); i++) {
            row.setField(i, i == 3 ? (Object) tsMs : i == 5 ? (Object) dwellMs : slots[i]);
        }
        return row;
    }
}
