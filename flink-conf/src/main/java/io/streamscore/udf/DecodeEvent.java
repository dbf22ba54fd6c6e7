package io.streamscore.udf;

import org.apache.flink.avro.shaded.org.apache.avro.Schema;
import org.apache.flink.avro.shaded.org.apache.avro.generic.GenericDatumReader;
import org.apache.flink.avro.shaded.org.apache.avro.generic.GenericRecord;
import org.apache.flink.avro.shaded.org.apache.avro.io.BinaryDecoder;
import org.apache.flink.avro.shaded.org.apache.avro.io.DecoderFactory;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;

/**
 * Decodes and validates one schemaless Avro interaction event inside the JVM, so no
 * per-event Python runs in the Flink job.
 *
 * <p>Returns a row whose {@code reason} is null for a good event, or one of the
 * dead-letter reasons of {@code transforms.codecs.DeadLetterReason} for a bad one. The
 * rules mirror {@code transforms.codecs.validate_event}; the integration tests feed
 * both the same bad records and compare reasons.
 *
 * <p>Arguments: the raw value, the writer and reader schema file names (bundled from
 * {@code schemas/} at build time), and the validation limits. Everything comes in the call,
 * so every instance (projection and pushed-down watermark generator alike) applies the
 * same rules without job parameters, which the watermark generator cannot read.
 */
@FunctionHint(
        output =
                @DataTypeHint(
                        "ROW<event_id STRING, user_id STRING, item_id STRING, ts_ms BIGINT,"
                                + " event_type STRING, dwell_ms DOUBLE, device STRING,"
                                + " region STRING, reason STRING, detail STRING>"))
public class DecodeEvent extends ScalarFunction {
    private static final long serialVersionUID = 1L;

    private transient GenericDatumReader<GenericRecord> reader;
    private transient String readerKey;
    private transient BinaryDecoder decoder;
    private transient GenericRecord reuse;
    private int maxKeyBytes;
    private long minTsMs;
    private long maxTsMs;

    /** Loads {@code schemas/<name>} bundled in this jar from the project's schemas folder. */
    private static Schema loadSchema(String name) {
        try (java.io.InputStream in =
                DecodeEvent.class.getResourceAsStream("/schemas/" + name)) {
            if (in == null) {
                throw new IllegalArgumentException("schema resource schemas/" + name + " not in jar");
            }
            return new Schema.Parser().parse(in);
        } catch (java.io.IOException exc) {
            throw new IllegalStateException("cannot read schema " + name, exc);
        }
    }

    private static Row bad(String reason, String detail) {
        return Row.of(null, null, null, null, null, null, null, null, reason, detail);
    }

    private String keyProblem(String name, String value) {
        if (value == null || value.isEmpty()) {
            return name + " is empty";
        }
        if (value.length() > maxKeyBytes
                || value.getBytes(java.nio.charset.StandardCharsets.UTF_8).length > maxKeyBytes) {
            return name + " longer than " + maxKeyBytes + " bytes";
        }
        return null;
    }

    /**
     * The planner may inline the computed column that calls this function more than once
     * per record (watermark and projection); caching the last input avoids a second decode.
     */
    private transient byte[] lastValue;

    private transient Row lastResult;

    public Row eval(
            byte[] value,
            String writerSchema,
            String readerSchema,
            Integer maxKeyBytes,
            Long minTsMs,
            Long maxTsMs) {
        String key = writerSchema + "|" + readerSchema;
        if (reader == null || !key.equals(readerKey)) {
            reader = new GenericDatumReader<>(loadSchema(writerSchema), loadSchema(readerSchema));
            readerKey = key;
            reuse = null;
            lastValue = null;
        }
        this.maxKeyBytes = maxKeyBytes;
        this.minTsMs = minTsMs;
        this.maxTsMs = maxTsMs;
        if (lastValue != null && java.util.Arrays.equals(value, lastValue)) {
            return lastResult;
        }
        Row result = decode(value);
        lastValue = value;
        lastResult = result;
        return result;
    }

    private Row decode(byte[] value) {
        if (value == null || value.length == 0) {
            return bad("undecodable", "empty value");
        }
        GenericRecord rec;
        try {
            decoder = DecoderFactory.get().binaryDecoder(value, decoder);
            rec = reader.read(reuse, decoder);
            if (!decoder.isEnd()) {
                return bad("undecodable", "trailing bytes after record");
            }
        } catch (Exception | StackOverflowError | OutOfMemoryError exc) {
            String msg = exc.getClass().getSimpleName() + ": " + exc.getMessage();
            return bad("undecodable", msg.length() > 300 ? msg.substring(0, 300) : msg);
        }
        String eventId = String.valueOf(rec.get("event_id"));
        String userId = String.valueOf(rec.get("user_id"));
        String itemId = String.valueOf(rec.get("item_id"));
        for (String[] kv :
                new String[][] {{"event_id", eventId}, {"user_id", userId}, {"item_id", itemId}}) {
            String problem = keyProblem(kv[0], kv[1]);
            if (problem != null) {
                return bad("invalid_key", problem);
            }
        }
        long tsMs = (Long) rec.get("ts_ms");
        if (tsMs < minTsMs || tsMs > maxTsMs) {
            return bad("invalid_timestamp", "ts_ms " + tsMs + " outside [" + minTsMs + ", " + maxTsMs + "]");
        }
        double dwellMs = (Double) rec.get("dwell_ms");
        if (Double.isNaN(dwellMs) || Double.isInfinite(dwellMs) || dwellMs < 0) {
            return bad("invalid_dwell", "dwell_ms " + dwellMs);
        }
        return Row.of(
                eventId,
                userId,
                itemId,
                tsMs,
                String.valueOf(rec.get("event_type")),
                dwellMs,
                String.valueOf(rec.get("device")),
                String.valueOf(rec.get("region")),
                null,
                null);
    }
}
