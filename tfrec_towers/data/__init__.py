"""Reading and writing event logs as TFRecord tf.Examples."""
