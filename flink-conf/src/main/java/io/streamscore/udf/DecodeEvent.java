package io.streamscore.udf;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import org.apache.flink.avro.shaded.org.apache.avro.Schema;
import org.apache.flink.avro.shaded.org.apache.avro.generic.GenericDatumReader;
import org.apache.flink.avro.shaded.org.apache.avro.generic.GenericRecord;
import org.apache.flink.avro.shaded.org.apache.avro.io.BinaryDecoder;
import org.apache.flink.avro.shaded.org.apache.avro.io.DecoderFactory;
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
 * dead-letter reasons of {@code transforms.codecs.DeadLetterReason} for a bad one. The
 * rules mirror {@code transforms.codecs.validate_event}; the integration tests feed both
 * the same bad records and compare reasons.
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
    /** Longest accepted version header: nine digits. */
    private static final int MAX_VERSION_DIGITS = 9;

    /** Per thread: readers by schema pair, and the last input with its result. */
    private static final class State {
        final Map<String, GenericDatumReader<GenericRecord>> readers = new HashMap<>();
        BinaryDecoder decoder;
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
        RowData lastResult;
    }

    private static final ThreadLocal<State> STATE = ThreadLocal.withInitial(State::new);

    /** Loads {@code schemas/<name>} bundled in this jar from the project's schemas folder. */
    private static Schema loadSchema(String name) {
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

    private static RowData bad(String reason, String detail) {
        GenericRowData row = new GenericRowData(FIELDS);
        row.setField(REASON, StringData.fromString(reason));
        row.setField(DETAIL, StringData.fromString(detail));
        return row;
    }

    private static String keyProblem(String name, String value, int maxKeyBytes) {
        if (value == null || value.isEmpty()) {
            return name + " is empty";
        }
        if (value.length() > maxKeyBytes
                || value.getBytes(StandardCharsets.UTF_8).length > maxKeyBytes) {
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
            Long maxTsMs) {
        State st = STATE.get();
        if (st.lastValue != null
                && (value == st.lastValue || Arrays.equals(value, st.lastValue))
                && st.lastWithHeader
                && Arrays.equals(versionHeader, st.lastVersionHeader)
                && maxKeyBytes == st.lastMaxKeyBytes
                && minTsMs == st.lastMinTsMs
                && maxTsMs == st.lastMaxTsMs
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
            result = decode(st, reader(st, writerSchema, readerSchema), value, maxKeyBytes, minTsMs, maxTsMs);
        }
        st.lastValue = value;
        st.lastVersionHeader = versionHeader;
        st.lastWithHeader = true;
        st.lastWriter = writerSchemas;
        st.lastReader = readerSchema;
        st.lastMaxKeyBytes = maxKeyBytes;
        st.lastMinTsMs = minTsMs;
        st.lastMaxTsMs = maxTsMs;
        st.lastResult = result;
        return result;
    }

    private static GenericDatumReader<GenericRecord> reader(State st, String writerSchema, String readerSchema) {
        return st.readers.computeIfAbsent(
                writerSchema + '|' + readerSchema,
                k -> new GenericDatumReader<>(loadSchema(writerSchema), loadSchema(readerSchema)));
    }

    /** One fixed writer schema (no version header). */
    public RowData eval(
            byte[] value,
            String writerSchema,
            String readerSchema,
            Integer maxKeyBytes,
            Long minTsMs,
            Long maxTsMs) {
        State st = STATE.get();
        if (st.lastValue != null
                && (value == st.lastValue || Arrays.equals(value, st.lastValue))
                && maxKeyBytes == st.lastMaxKeyBytes
                && minTsMs == st.lastMinTsMs
                && maxTsMs == st.lastMaxTsMs
                && !st.lastWithHeader
                && writerSchema.equals(st.lastWriter)
                && readerSchema.equals(st.lastReader)) {
            return st.lastResult;
        }
        RowData result = decode(st, reader(st, writerSchema, readerSchema), value, maxKeyBytes, minTsMs, maxTsMs);
        st.lastValue = value;
        st.lastVersionHeader = null;
        st.lastWithHeader = false;
        st.lastWriter = writerSchema;
        st.lastReader = readerSchema;
        st.lastMaxKeyBytes = maxKeyBytes;
        st.lastMinTsMs = minTsMs;
        st.lastMaxTsMs = maxTsMs;
        st.lastResult = result;
        return result;
    }

    private static RowData decode(
            State st,
            GenericDatumReader<GenericRecord> reader,
            byte[] value,
            int maxKeyBytes,
            long minTsMs,
            long maxTsMs) {
        if (value == null || value.length == 0) {
            return bad("undecodable", "empty value");
        }
        GenericRecord rec;
        try {
            st.decoder = DecoderFactory.get().binaryDecoder(value, st.decoder);
            rec = reader.read(null, st.decoder);
            if (!st.decoder.isEnd()) {
                return bad("undecodable", "trailing bytes after record");
            }
        } catch (Exception | StackOverflowError | OutOfMemoryError exc) {
            String msg = exc.getClass().getSimpleName() + ": " + exc.getMessage();
            return bad("undecodable", msg.length() > 300 ? msg.substring(0, 300) : msg);
        }
        String eventId = String.valueOf(rec.get("event_id"));
        String userId = String.valueOf(rec.get("user_id"));
        String itemId = String.valueOf(rec.get("item_id"));
        String[][] keys = {{"event_id", eventId}, {"user_id", userId}, {"item_id", itemId}};
        for (String[] kv : keys) {
            String problem = keyProblem(kv[0], kv[1], maxKeyBytes);
            if (problem != null) {
                return bad("invalid_key", problem);
            }
        }
        long tsMs = (Long) rec.get("ts_ms");
        if (tsMs < minTsMs || tsMs > maxTsMs) {
            return bad(
                    "invalid_timestamp",
                    "ts_ms " + tsMs + " outside [" + minTsMs + ", " + maxTsMs + "]");
        }
        double dwellMs = (Double) rec.get("dwell_ms");
        if (Double.isNaN(dwellMs) || Double.isInfinite(dwellMs) || dwellMs < 0) {
            return bad("invalid_dwell", "dwell_ms " + dwellMs);
        }
        GenericRowData row = new GenericRowData(FIELDS);
        row.setField(0, StringData.fromString(eventId));
        row.setField(1, StringData.fromString(userId));
        row.setField(2, StringData.fromString(itemId));
        row.setField(3, tsMs);
        row.setField(4, StringData.fromString(String.valueOf(rec.get("event_type"))));
        row.setField(5, dwellMs);
        row.setField(6, StringData.fromString(String.valueOf(rec.get("device"))));
        row.setField(7, StringData.fromString(String.valueOf(rec.get("region"))));
        if (rec.getSchema().getField("item_category") != null && rec.get("item_category") != null) {
            row.setField(8, StringData.fromString(String.valueOf(rec.get("item_category"))));
        }
        return row;
    }
}
