"""The embedded local stack (Kafka, S3, Redis, Airflow on 127.0.0.1) and deployment assets."""
