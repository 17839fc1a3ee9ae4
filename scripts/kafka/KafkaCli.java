// Small admin/produce/consume helper for scripts/kafka/kafka.sh.
//
// kafka-tools (TopicCommand, ConsoleProducer) is not on Maven Central for
// every Kafka release, so kafka.sh uses this file instead. It only uses the
// public kafka-clients API, which is on the broker's classpath anyway. It is
// compiled once by kafka.sh (javac) into the jar cache.
//
// Usage: java -cp '<jars>/*:<classes>' KafkaCli BOOTSTRAP COMMAND [ARGS...]
//   ready TIMEOUT_MS             exit 0 once the cluster answers metadata
//   list                         print topic names, one per line
//   describe TOPIC               print partitions and leaders
//   create TOPIC PARTITIONS      create (replication factor 1); ok if it
//                                already exists with the same partition count
//   produce TOPIC [VALUE...]     send each VALUE (or each stdin line) as a
//                                record with a null key
//   consume TOPIC MAX TIMEOUT_MS print up to MAX values from the beginning

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class KafkaCli {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            usage();
        }
        String bootstrap = args[0];
        String cmd = args[1];
        try {
            switch (cmd) {
                case "ready": need(args, 3); System.exit(ready(bootstrap, Long.parseLong(args[2]))); break;
                case "list": list(bootstrap); break;
                case "describe": need(args, 3); describe(bootstrap, args[2]); break;
                case "create": need(args, 4); System.exit(create(bootstrap, args[2], Integer.parseInt(args[3]))); break;
                case "produce": need(args, 3); produce(bootstrap, args[2], List.of(args).subList(3, args.length)); break;
                case "consume": need(args, 5); consume(bootstrap, args[2], Integer.parseInt(args[3]), Long.parseLong(args[4])); break;
                default: usage();
            }
        } catch (ExecutionException e) {
            System.err.println("error: " + e.getCause());
            System.exit(1);
        }
        System.exit(0);
    }

    private static void need(String[] args, int n) {
        if (args.length < n) {
            usage();
        }
    }

    private static void usage() {
        System.err.println("usage: KafkaCli BOOTSTRAP ready TIMEOUT_MS | list | describe TOPIC | "
                + "create TOPIC PARTITIONS | produce TOPIC [VALUE...] | consume TOPIC MAX TIMEOUT_MS");
        System.exit(2);
    }

    private static Admin admin(String bootstrap, int timeoutMs) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, Math.max(1000, Math.min(timeoutMs, 10000)));
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, Math.max(1000, timeoutMs));
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 500);
        p.put(AdminClientConfig.RETRY_BACKOFF_MAX_MS_CONFIG, 500);
        return Admin.create(p);
    }

    /** Polls until describeCluster sees a node and listTopics answers, or the deadline passes. */
    private static int ready(String bootstrap, long timeoutMs) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        String last = "no answer";
        try (Admin admin = admin(bootstrap, 5000)) {
            while (true) {
                long leftMs = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
                if (leftMs <= 0) {
                    System.err.println("not ready: " + last);
                    return 1;
                }
                int stepMs = (int) Math.max(1000, Math.min(leftMs, 5000));
                try {
                    Collection<Node> nodes = admin.describeCluster(new DescribeClusterOptions().timeoutMs(stepMs))
                            .nodes().get(stepMs, TimeUnit.MILLISECONDS);
                    Set<String> names = admin.listTopics(new ListTopicsOptions().timeoutMs(stepMs))
                            .names().get(stepMs, TimeUnit.MILLISECONDS);
                    if (!nodes.isEmpty()) {
                        System.out.println("ready: " + nodes.size() + " broker(s), " + names.size() + " topic(s)");
                        return 0;
                    }
                    last = "no brokers in metadata";
                } catch (Exception e) {
                    last = String.valueOf(e.getCause() != null ? e.getCause() : e);
                }
                Thread.sleep(250);
            }
        }
    }

    private static void list(String bootstrap) throws Exception {
        try (Admin admin = admin(bootstrap, 15000)) {
            for (String name : new TreeSet<>(admin.listTopics().names().get())) {
                System.out.println(name);
            }
        }
    }

    private static void describe(String bootstrap, String topic) throws Exception {
        try (Admin admin = admin(bootstrap, 15000)) {
            TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
            System.out.println("topic=" + d.name() + " id=" + d.topicId() + " partitions=" + d.partitions().size());
            for (TopicPartitionInfo p : d.partitions()) {
                System.out.println("  partition=" + p.partition() + " leader="
                        + (p.leader() == null ? "none" : p.leader().id())
                        + " replicas=" + p.replicas().size() + " isr=" + p.isr().size());
            }
        }
    }

    private static int create(String bootstrap, String topic, int partitions) throws Exception {
        try (Admin admin = admin(bootstrap, 30000)) {
            try {
                admin.createTopics(List.of(new NewTopic(topic, partitions, (short) 1))).all().get();
                System.out.println("created topic " + topic + " with " + partitions + " partition(s)");
                return 0;
            } catch (ExecutionException e) {
                if (!(e.getCause() instanceof TopicExistsException)) {
                    throw e;
                }
            }
            int have = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic).partitions().size();
            if (have == partitions) {
                System.out.println("topic " + topic + " already exists with " + have + " partition(s)");
                return 0;
            }
            System.err.println("error: topic " + topic + " already exists with " + have
                    + " partition(s), wanted " + partitions);
            return 1;
        }
    }

    private static void produce(String bootstrap, String topic, List<String> values) throws Exception {
        List<String> all = new ArrayList<>(values);
        if (all.isEmpty()) {
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            for (String line; (line = in.readLine()) != null; ) {
                all.add(line);
            }
        }
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, 30000);
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, 30000);
        p.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, 10000);
        p.put(ProducerConfig.LINGER_MS_CONFIG, 0);
        try (KafkaProducer<String, String> producer =
                     new KafkaProducer<>(p, new StringSerializer(), new StringSerializer())) {
            List<java.util.concurrent.Future<RecordMetadata>> sent = new ArrayList<>();
            for (String v : all) {
                sent.add(producer.send(new ProducerRecord<>(topic, null, v)));
            }
            producer.flush();
            for (java.util.concurrent.Future<RecordMetadata> f : sent) {
                RecordMetadata m = f.get();
                System.out.println("produced " + m.topic() + "-" + m.partition() + "@" + m.offset());
            }
        }
    }

    private static void consume(String bootstrap, String topic, int max, long timeoutMs) throws Exception {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        try (KafkaConsumer<String, String> consumer =
                     new KafkaConsumer<>(p, new StringDeserializer(), new StringDeserializer())) {
            List<TopicPartition> tps = new ArrayList<>();
            consumer.partitionsFor(topic, Duration.ofMillis(timeoutMs))
                    .forEach(i -> tps.add(new TopicPartition(i.topic(), i.partition())));
            consumer.assign(tps);
            consumer.seekToBeginning(tps);
            Map<TopicPartition, Long> end = consumer.endOffsets(tps, Duration.ofMillis(timeoutMs));
            long available = end.values().stream().mapToLong(Long::longValue).sum();
            int got = 0;
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
            while (got < max && got < available && System.nanoTime() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(200))) {
                    if (got >= max) {
                        break;
                    }
                    System.out.println(r.partition() + "@" + r.offset() + "\t" + r.value());
                    got++;
                }
            }
            System.err.println("consumed " + got + " record(s)");
        }
    }
}
