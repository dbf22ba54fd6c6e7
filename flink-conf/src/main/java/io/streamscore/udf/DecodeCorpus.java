package io.streamscore.udf;

import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import org.apache.flink.table.data.RowData;

/**
 * Runs the job's decoder ({@link DecodeEvent}, the exact code of the Flink job) over a
 * corpus outside Flink, for the cross-engine test: one JSON line per record on stdout.
 *
 * <p>Stdin: records of {@code int headerLength (-1: no schema-version header), header,
 * int valueLength (-1: null), value}, big-endian lengths. Arguments: the writer schema
 * list (as in the job's decode call), the reader schema file, max key bytes, min and max
 * ts_ms, min and max dwell_ms.
 */
public final class DecodeCorpus {
    private DecodeCorpus() {}

    private static byte[] readBlock(DataInputStream in) throws IOException {
        int n = in.readInt();
        if (n < 0) {
            return null;
        }
        byte[] out = new byte[n];
        in.readFully(out);
        return out;
    }

    private static String json(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (int i = 0; i < s.length(); i++) {
            char ch = s.charAt(i);
            if (ch == '"' || ch == '\\') {
                sb.append('\\').append(ch);
            } else if (ch < 0x20 || ch > 0x7E) {
                sb.append(String.format("\\u%04x", (int) ch));
            } else {
                sb.append(ch);
            }
        }
        return sb.append('"').toString();
    }

    private static String field(RowData row, int i) {
        if (row.isNullAt(i)) {
            return "null";
        }
        if (i == 3) {
            return Long.toString(row.getLong(i));
        }
        if (i == 5) {
            return Double.toString(row.getDouble(i));
        }
        return json(row.getString(i).toString());
    }

    public static void main(String[] args) throws IOException {
        DecodeEvent fn = new DecodeEvent();
        int maxKeyBytes = Integer.parseInt(args[2]);
        long minTs = Long.parseLong(args[3]);
        long maxTs = Long.parseLong(args[4]);
        double minDwell = Double.parseDouble(args[5]);
        double maxDwell = Double.parseDouble(args[6]);
        PrintStream out = new PrintStream(new BufferedOutputStream(System.out), false, StandardCharsets.UTF_8);
        try (DataInputStream in = new DataInputStream(new java.io.BufferedInputStream(System.in))) {
            while (true) {
                byte[] header;
                try {
                    header = readBlock(in);
                } catch (EOFException end) {
                    break;
                }
                byte[] value = readBlock(in);
                RowData row = fn.eval(value, header, args[0], args[1], maxKeyBytes, minTs, maxTs, minDwell, maxDwell);
                StringBuilder sb = new StringBuilder("{");
                if (!row.isNullAt(9)) {
                    sb.append("\"reason\": ").append(json(row.getString(9).toString()))
                            .append(", \"detail\": ").append(json(row.getString(10).toString()));
                } else {
                    sb.append("\"event\": {");
                    for (int i = 0; i < DecodeEvent.LAYOUT.size(); i++) {
                        sb.append(i == 0 ? "" : ", ").append(json(DecodeEvent.LAYOUT.get(i))).append(": ")
                                .append(field(row, i));
                    }
                    sb.append('}');
                }
                out.println(sb.append('}'));
            }
        }
        out.flush();
    }
}
