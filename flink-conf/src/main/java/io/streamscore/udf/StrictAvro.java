package io.streamscore.udf;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.apache.flink.avro.shaded.org.apache.avro.Schema;
import org.apache.flink.table.data.StringData;

/**
 * The strict Avro binary decoding rule for events: the JVM twin of {@code
 * transforms/event_decoder.py}, line for line, with the same details (a cross-engine
 * test feeds both one malformed corpus and compares verdicts and details).
 *
 * <p>A {@code long} varint has at most 10 bytes and its 10th byte is 0 or 1; an {@code
 * int} (enum and union indexes) at most 5 bytes with a 5th byte of at most 0x0F. Lengths
 * are not negative and stay within the value; strings are well-formed UTF-8 (Unicode
 * Table 3-7: no overlong forms, surrogates, lone continuation bytes, cut sequences or
 * code points over U+10FFFF); enum and union indexes are within their symbols and
 * branches; booleans are 0 or 1; nothing trails the record.
 *
 * <p>A plan compiled from a writer and a reader schema follows Avro resolution: fields by
 * name or reader alias, reader fields the writer lacks take their default, writer fields
 * the reader lacks are decoded (and checked) and dropped; promotions int to long, float
 * or double, long to float or double, float to double, string to and from bytes. Values
 * come out as Flink internal data: {@link StringData} for strings and enum symbols, Long,
 * Integer, Double, Float, Boolean, byte[] or null.
 */
public final class StrictAvro {
    private StrictAvro() {}

    /** The bytes are not a record of the writer schema under the strict rule. */
    public static final class DecodeException extends Exception {
        private static final long serialVersionUID = 1L;

        public DecodeException(String message) {
            super(message, null, false, false); // no stack trace: this is data, not a bug
        }
    }

    /** Position in the value being read. */
    static final class Cursor {
        final byte[] buf;
        int pos;

        Cursor(byte[] buf) {
            this.buf = buf;
        }
    }

    interface Reader {
        Object read(Cursor c, String field) throws DecodeException;
    }

    private static long varint(Cursor c, String field, int maxBytes, int lastMax, String kind)
            throws DecodeException {
        byte[] buf = c.buf;
        int pos = c.pos;
        long result = 0;
        for (int i = 0; i < maxBytes; i++) {
            if (pos >= buf.length) {
                throw new DecodeException(field + ": truncated");
            }
            int b = buf[pos++] & 0xFF;
            result |= ((long) (b & 0x7F)) << (7 * i);
            if ((b & 0x80) == 0) {
                if (i == maxBytes - 1 && b > lastMax) {
                    break;
                }
                c.pos = pos;
                return (result >>> 1) ^ -(result & 1);
            }
        }
        throw new DecodeException(field + ": invalid " + kind + " encoding");
    }

    static long readLong(Cursor c, String field) throws DecodeException {
        return varint(c, field, 10, 0x01, "long");
    }

    static int readInt(Cursor c, String field) throws DecodeException {
        return (int) varint(c, field, 5, 0x0F, "int");
    }

    private static int take(Cursor c, String field, long n) throws DecodeException {
        if (c.pos + n > c.buf.length) {
            throw new DecodeException(field + ": truncated");
        }
        int start = c.pos;
        c.pos += (int) n;
        return start;
    }

    static byte[] readBytes(Cursor c, String field) throws DecodeException {
        long n = readLong(c, field);
        if (n < 0) {
            throw new DecodeException(field + ": negative length " + n);
        }
        int start = take(c, field, n);
        byte[] out = new byte[(int) n];
        System.arraycopy(c.buf, start, out, 0, (int) n);
        return out;
    }

    static StringData readString(Cursor c, String field) throws DecodeException {
        long n = readLong(c, field);
        if (n < 0) {
            throw new DecodeException(field + ": negative length " + n);
        }
        int start = take(c, field, n);
        if (!wellFormedUtf8(c.buf, start, start + (int) n)) {
            throw new DecodeException(field + ": invalid UTF-8");
        }
        byte[] out = new byte[(int) n];
        System.arraycopy(c.buf, start, out, 0, (int) n);
        return StringData.fromBytes(out);
    }

    private static boolean cont(byte b) {
        return (b & 0xC0) == 0x80;
    }

    /** Well-formed UTF-8 per Unicode Table 3-7 (what Python's strict decoder accepts). */
    static boolean wellFormedUtf8(byte[] buf, int from, int to) {
        int i = from;
        while (i < to) {
            int b = buf[i] & 0xFF;
            if (b < 0x80) {
                i++;
            } else if (b < 0xC2) {
                return false;
            } else if (b < 0xE0) {
                if (i + 1 >= to || !cont(buf[i + 1])) {
                    return false;
                }
                i += 2;
            } else if (b < 0xF0) {
                if (i + 2 >= to) {
                    return false;
                }
                int b1 = buf[i + 1] & 0xFF;
                if (!cont(buf[i + 1]) || !cont(buf[i + 2])
                        || (b == 0xE0 && b1 < 0xA0) || (b == 0xED && b1 > 0x9F)) {
                    return false;
                }
                i += 3;
            } else if (b < 0xF5) {
                if (i + 3 >= to) {
                    return false;
                }
                int b1 = buf[i + 1] & 0xFF;
                if (!cont(buf[i + 1]) || !cont(buf[i + 2]) || !cont(buf[i + 3])
                        || (b == 0xF0 && b1 < 0x90) || (b == 0xF4 && b1 > 0x8F)) {
                    return false;
                }
                i += 4;
            } else {
                return false;
            }
        }
        return true;
    }

    private static int index(Cursor c, String field, int size, String what) throws DecodeException {
        int i = readInt(c, field);
        if (i < 0 || i >= size) {
            throw new DecodeException(field + ": " + what + " index " + i + " outside [0, " + size + ")");
        }
        return i;
    }

    /** A writer schema cannot be read with the reader schema (or uses an unsupported type). */
    public static final class PlanException extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;

        public PlanException(String message) {
            super(message);
        }
    }

    private static boolean promotes(Schema.Type w, Schema.Type r) {
        switch (w) {
            case INT:
                return r == Schema.Type.LONG || r == Schema.Type.FLOAT || r == Schema.Type.DOUBLE;
            case LONG:
                return r == Schema.Type.FLOAT || r == Schema.Type.DOUBLE;
            case FLOAT:
                return r == Schema.Type.DOUBLE;
            case STRING:
                return r == Schema.Type.BYTES;
            case BYTES:
                return r == Schema.Type.STRING;
            default:
                return false;
        }
    }

    private static boolean namesMatch(Schema w, Schema r) {
        return w.getFullName().equals(r.getFullName())
                || r.getAliases().contains(w.getFullName())
                || w.getName().equals(r.getName());
    }

    private static boolean matches(Schema w, Schema r) {
        Schema.Type wt = w.getType();
        Schema.Type rt = r.getType();
        if (wt == Schema.Type.ENUM || wt == Schema.Type.FIXED) {
            return rt == wt && namesMatch(w, r);
        }
        return wt == rt || promotes(wt, rt);
    }

    private static Reader primitive(Schema.Type w, Schema.Type r) {
        switch (w) {
            case NULL:
                return (c, f) -> null;
            case BOOLEAN:
                return (c, f) -> {
                    int b = c.buf[take(c, f, 1)] & 0xFF;
                    if (b > 1) {
                        throw new DecodeException(f + ": invalid boolean byte " + b);
                    }
                    return b == 1;
                };
            case INT:
                if (r == Schema.Type.LONG) {
                    return (c, f) -> (long) readInt(c, f);
                }
                if (r == Schema.Type.FLOAT) {
                    return (c, f) -> (float) readInt(c, f);
                }
                if (r == Schema.Type.DOUBLE) {
                    return (c, f) -> (double) readInt(c, f);
                }
                return (c, f) -> readInt(c, f);
            case LONG:
                if (r == Schema.Type.FLOAT) {
                    return (c, f) -> (float) readLong(c, f);
                }
                if (r == Schema.Type.DOUBLE) {
                    return (c, f) -> (double) readLong(c, f);
                }
                return (c, f) -> readLong(c, f);
            case FLOAT:
                if (r == Schema.Type.DOUBLE) {
                    return (c, f) -> (double) Float.intBitsToFloat(littleEndian(c, f, 4).intValue());
                }
                return (c, f) -> Float.intBitsToFloat(littleEndian(c, f, 4).intValue());
            case DOUBLE:
                return (c, f) -> Double.longBitsToDouble(littleEndian(c, f, 8));
            case STRING:
                if (r == Schema.Type.BYTES) {
                    return StrictAvro::readBytes;
                }
                return StrictAvro::readString;
            case BYTES:
                if (r == Schema.Type.STRING) {
                    return StrictAvro::readString;
                }
                return StrictAvro::readBytes;
            default:
                throw new PlanException("unsupported type " + w);
        }
    }

    private static Long littleEndian(Cursor c, String field, int n) throws DecodeException {
        int start = take(c, field, n);
        long v = 0;
        for (int i = n - 1; i >= 0; i--) {
            v = (v << 8) | (c.buf[start + i] & 0xFF);
        }
        return v;
    }

    static Reader resolve(Schema w, Schema r, String where) {
        Schema.Type wt = w.getType();
        Schema.Type rt = r.getType();
        if (wt == Schema.Type.UNION) {
            List<Schema> types = w.getTypes();
            Reader[] branches = new Reader[types.size()];
            for (int i = 0; i < branches.length; i++) {
                try {
                    branches[i] = resolve(types.get(i), r, where);
                } catch (PlanException exc) {
                    branches[i] = null; // legal only while the writer never picks it
                }
            }
            return (c, f) -> {
                Reader fn = branches[index(c, f, branches.length, "union")];
                if (fn == null) {
                    throw new DecodeException(f + ": union branch not in the reader schema");
                }
                return fn.read(c, f);
            };
        }
        if (rt == Schema.Type.UNION) {
            for (Schema b : r.getTypes()) {
                if (matches(w, b) && b.getType() == wt) {
                    return resolve(w, b, where);
                }
            }
            for (Schema b : r.getTypes()) {
                if (matches(w, b)) {
                    return resolve(w, b, where);
                }
            }
            throw new PlanException(where + ": writer type " + wt + " matches no reader union branch");
        }
        if (wt == Schema.Type.ENUM) {
            if (rt != Schema.Type.ENUM || !namesMatch(w, r)) {
                throw new PlanException(where + ": writer enum cannot be read as " + rt);
            }
            List<String> ws = w.getEnumSymbols();
            StringData[] symbols = new StringData[ws.size()];
            for (int i = 0; i < symbols.length; i++) {
                String s = ws.get(i);
                String sym = r.hasEnumSymbol(s) ? s : r.getEnumDefault();
                symbols[i] = sym == null ? null : StringData.fromString(sym);
            }
            return (c, f) -> {
                StringData sym = symbols[index(c, f, symbols.length, "enum")];
                if (sym == null) {
                    throw new DecodeException(f + ": enum symbol not in the reader schema");
                }
                return sym;
            };
        }
        if (wt == Schema.Type.FIXED) {
            if (rt != Schema.Type.FIXED || !namesMatch(w, r) || w.getFixedSize() != r.getFixedSize()) {
                throw new PlanException(where + ": writer fixed cannot be read as " + rt);
            }
            int size = w.getFixedSize();
            return (c, f) -> {
                int start = take(c, f, size);
                byte[] out = new byte[size];
                System.arraycopy(c.buf, start, out, 0, size);
                return out;
            };
        }
        if (wt == Schema.Type.RECORD || wt == Schema.Type.ARRAY || wt == Schema.Type.MAP) {
            throw new PlanException(where + ": unsupported writer type " + wt);
        }
        if (wt != rt && !promotes(wt, rt)) {
            throw new PlanException(where + ": writer type " + wt + " cannot be read as " + rt);
        }
        return primitive(wt, rt);
    }

    /** Reads one writer record as the reader, into slots of a fixed output layout. */
    public static final class RecordPlan {
        final String[] writerFields;
        final int[] slots; // output slot of each writer field, -1: dropped
        final Reader[] readers;
        final int[] defaultSlots;
        final Object[] defaults;

        RecordPlan(String[] writerFields, int[] slots, Reader[] readers, int[] defaultSlots, Object[] defaults) {
            this.writerFields = writerFields;
            this.slots = slots;
            this.readers = readers;
            this.defaultSlots = defaultSlots;
            this.defaults = defaults;
        }

        /** Fills {@code out} (by slot) from {@code value}, or throws with the field and the problem. */
        public void decode(byte[] value, Object[] out) throws DecodeException {
            Cursor c = new Cursor(value);
            for (int i = 0; i < readers.length; i++) {
                Object v = readers[i].read(c, writerFields[i]);
                if (slots[i] >= 0) {
                    out[slots[i]] = v;
                }
            }
            if (c.pos != value.length) {
                throw new DecodeException("trailing bytes after record");
            }
            for (int i = 0; i < defaultSlots.length; i++) {
                out[defaultSlots[i]] = defaults[i];
            }
        }
    }

    private static Object defaultValue(Schema.Field rf) {
        Object d = rf.defaultVal();
        if (d == null || d == org.apache.flink.avro.shaded.org.apache.avro.JsonProperties.NULL_VALUE) {
            return null;
        }
        if (d instanceof CharSequence) {
            return StringData.fromString(d.toString());
        }
        return d;
    }

    /**
     * The plan reading {@code writer} records as {@code reader}; {@code layout} names the
     * output slots (reader field names; reader fields not in it are dropped).
     */
    public static RecordPlan compile(Schema writer, Schema reader, List<String> layout) {
        if (writer.getType() != Schema.Type.RECORD || reader.getType() != Schema.Type.RECORD) {
            throw new PlanException("both schemas must be records");
        }
        Map<String, Schema.Field> byName = new HashMap<>();
        for (Schema.Field rf : reader.getFields()) {
            byName.putIfAbsent(rf.name(), rf);
            for (String alias : rf.aliases()) {
                byName.putIfAbsent(alias, rf);
            }
        }
        List<Schema.Field> wfs = writer.getFields();
        String[] names = new String[wfs.size()];
        int[] slots = new int[wfs.size()];
        Reader[] readers = new Reader[wfs.size()];
        Set<String> seen = new HashSet<>();
        for (int i = 0; i < names.length; i++) {
            Schema.Field wf = wfs.get(i);
            names[i] = wf.name();
            Schema.Field rf = byName.get(wf.name());
            if (rf == null) {
                slots[i] = -1;
                readers[i] = resolve(wf.schema(), wf.schema(), wf.name());
            } else {
                seen.add(rf.name());
                slots[i] = layout.indexOf(rf.name());
                readers[i] = resolve(wf.schema(), rf.schema(), wf.name());
            }
        }
        List<Integer> dSlots = new ArrayList<>();
        List<Object> dValues = new ArrayList<>();
        for (Schema.Field rf : reader.getFields()) {
            if (seen.contains(rf.name())) {
                continue;
            }
            if (!rf.hasDefaultValue()) {
                throw new PlanException(
                        "reader field " + rf.name() + " is missing from the writer and has no default");
            }
            int slot = layout.indexOf(rf.name());
            if (slot >= 0) {
                dSlots.add(slot);
                dValues.add(defaultValue(rf));
            }
        }
        int[] ds = new int[dSlots.size()];
        for (int i = 0; i < ds.length; i++) {
            ds[i] = dSlots.get(i);
        }
        return new RecordPlan(names, slots, readers, ds, dValues.toArray());
    }

    /** UTF-8 byte length of a string slot value (keys are checked in bytes). */
    static int utf8Length(Object v) {
        if (v instanceof org.apache.flink.table.data.binary.BinaryStringData) {
            return ((org.apache.flink.table.data.binary.BinaryStringData) v).getSizeInBytes();
        }
        return v == null ? 0 : v.toString().getBytes(StandardCharsets.UTF_8).length;
    }
}
