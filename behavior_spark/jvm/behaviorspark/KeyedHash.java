package behaviorspark;

import java.nio.charset.StandardCharsets;
import java.text.Normalizer;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import org.apache.spark.broadcast.Broadcast;
import org.apache.spark.sql.api.java.UDF1;

/**
 * The pseudonym of a raw id in the JVM: HMAC-SHA256 of the id after NFKC and the removal of outer white space, as 64
 * lower-case hex characters (null stays null). The same function as behavior_spark.privacy.hmac_hex in Python.
 *
 * <p>The key reaches the executors in a broadcast variable (a classic session: the driver holds the key) or from
 * their environment ({@link FromEnvironment}, a Spark Connect server's executors): the query plan holds only the
 * function's name, never the key or its HMAC pads. Each thread keeps its own initialised Mac.
 */
public final class KeyedHash implements UDF1<String, String> {
  private static final long serialVersionUID = 1L;
  private static final char[] HEX = "0123456789abcdef".toCharArray();

  private final Broadcast<byte[]> key;
  private transient ThreadLocal<Mac> macs;

  public KeyedHash(Broadcast<byte[]> key) {
    this.key = key;
  }

  @Override
  public String call(String id) throws Exception {
    if (id == null) {
      return null;
    }
    if (macs == null) {
      macs = ThreadLocal.withInitial(() -> mac(key.value()));
    }
    return pseudonym(macs.get(), id);
  }

  /** The pseudonym of one id with an initialised Mac (reset by doFinal, ready for the next id). */
  static String pseudonym(Mac mac, String id) {
    byte[] digest = mac.doFinal(normalise(id).getBytes(StandardCharsets.UTF_8));
    char[] out = new char[digest.length * 2];
    for (int i = 0; i < digest.length; i++) {
      out[2 * i] = HEX[(digest[i] >> 4) & 0xf];
      out[2 * i + 1] = HEX[digest[i] & 0xf];
    }
    return new String(out);
  }

  static Mac mac(byte[] key) {
    try {
      Mac mac = Mac.getInstance("HmacSHA256");
      mac.init(new SecretKeySpec(key, "HmacSHA256"));
      return mac;
    } catch (java.security.GeneralSecurityException e) {
      throw new IllegalStateException("HmacSHA256 is not available", e);
    }
  }

  /** NFKC, then outer white space removed as Python's str.strip() does (its str.isspace, not Java's). */
  static String normalise(String id) {
    String text = Normalizer.normalize(id, Normalizer.Form.NFKC);
    int start = 0;
    int end = text.length();
    while (start < end && isPythonSpace(text.charAt(start))) {
      start++;
    }
    while (end > start && isPythonSpace(text.charAt(end - 1))) {
      end--;
    }
    return text.substring(start, end);
  }

  static boolean isPythonSpace(char c) {
    return (c >= 0x09 && c <= 0x0d)
        || (c >= 0x1c && c <= 0x20)
        || c == 0x85
        || c == 0xa0
        || c == 0x1680
        || (c >= 0x2000 && c <= 0x200a)
        || c == 0x2028
        || c == 0x2029
        || c == 0x202f
        || c == 0x205f
        || c == 0x3000;
  }

  /**
   * The same pseudonym with the key taken from the executor's environment variable named by the second argument
   * (`ingest.pseudonym_key_env`), for a Spark Connect client, which never holds the key. Registered by class name.
   */
  public static final class FromEnvironment implements org.apache.spark.sql.api.java.UDF2<String, String, String> {
    private static final long serialVersionUID = 1L;
    private transient ThreadLocal<Mac> macs;

    @Override
    public String call(String id, String variable) throws Exception {
      if (id == null) {
        return null;
      }
      if (macs == null) {
        macs = ThreadLocal.withInitial(() -> mac(environmentKey(variable)));
      }
      return pseudonym(macs.get(), id);
    }

    private static byte[] environmentKey(String variable) {
      String value = System.getenv(variable);
      if (value == null || value.length() < 16) {
        throw new IllegalStateException(
            "environment variable " + variable + " must hold the pseudonymisation key on every executor, at least"
                + " 16 characters; it is " + (value == null || value.isEmpty() ? "not set" : "too short"));
      }
      return value.getBytes(StandardCharsets.UTF_8);
    }
  }
}
