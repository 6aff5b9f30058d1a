"""From raw files to padded TFRecords and back: readers, the tasks (one file each), the prep
engine, and the tf.data input pipeline over prepared records."""
