package io.streamscore.udf;

import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * Bounds the raw bytes a dead letter keeps: {@code raw_digest(value, maxBytes)} gives the
 * first {@code maxBytes} bytes of {@code value} ({@code raw}), its length ({@code
 * raw_size}), the lower-case hex SHA-256 of the whole value ({@code raw_sha256}) and
 * whether {@code raw} is a strict prefix ({@code raw_truncated}); a null value counts as
 * empty. The fields of {@code schemas/dead_letter.v2.avsc}; mirrors {@code
 * transforms.dead_letters.bound_raw}, which the integration test checks it against.
 *
 * <p>Called on the dead-letter path only. The planner inlines the call once per field
 * read (four times a record); a per-thread cache of the last input (the same array, or
 * equal bytes: the function is deterministic) makes those calls share one digest.
 */
@FunctionHint(
        output =
                @DataTypeHint(
                        value =
                                "ROW<`raw` BYTES NOT NULL, `raw_size` BIGINT NOT NULL,"
                                        + " `raw_sha256` STRING NOT NULL,"
                                        + " `raw_truncated` BOOLEAN NOT NULL>",
                        bridgedTo = RowData.class))
public class RawDigest extends ScalarFunction {
    private static final long serialVersionUID = 1L;
    private static final byte[] EMPTY = new byte[0];
    private static final char[] HEX = "0123456789abcdef".toCharArray();

    /** Per thread: the last input and bound, with its result. */
    private static final class State {
        byte[] lastValue;
        int lastMaxBytes = -1;
        RowData lastResult;
    }

    private static final ThreadLocal<State> STATE = ThreadLocal.withInitial(State::new);

    /** Lower-case hex SHA-256 of {@code value}. */
    static String sha256Hex(byte[] value) {
        byte[] digest;
        try {
            digest = MessageDigest.getInstance("SHA-256").digest(value);
        } catch (NoSuchAlgorithmException exc) {
            throw new IllegalStateException("SHA-256 is not available in this JVM", exc);
        }
        char[] out = new char[digest.length * 2];
        for (int i = 0; i < digest.length; i++) {
            out[2 * i] = HEX[(digest[i] >> 4) & 0xf];
            out[2 * i + 1] = HEX[digest[i] & 0xf];
        }
        return new String(out);
    }

    /** The bounded raw bytes of one dead letter; {@code maxBytes} must be {@code >= 0}. */
    public RowData eval(byte[] value, Integer maxBytes) {
        if (maxBytes == null || maxBytes < 0) {
            throw new IllegalArgumentException("raw_digest: maxBytes must be >= 0, got " + maxBytes);
        }
        byte[] v = value == null ? EMPTY : value;
        State st = STATE.get();
        if (maxBytes == st.lastMaxBytes && (v == st.lastValue || Arrays.equals(v, st.lastValue))) {
            return st.lastResult;
        }
        boolean truncated = v.length > maxBytes;
        GenericRowData row = new GenericRowData(4);
        row.setField(0, truncated ? Arrays.copyOf(v, maxBytes) : v);
        row.setField(1, (long) v.length);
        row.setField(2, StringData.fromString(sha256Hex(v)));
        row.setField(3, truncated);
        st.lastValue = v;
        st.lastMaxBytes = maxBytes;
        st.lastResult = row;
        return row;
    }
}
