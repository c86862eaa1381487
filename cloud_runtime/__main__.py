import sys

from cloud_runtime.serve import main

sys.exit(main())
