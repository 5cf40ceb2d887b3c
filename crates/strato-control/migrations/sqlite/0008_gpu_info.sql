ALTER TABLE nodes ADD COLUMN gpu_info TEXT NOT NULL DEFAULT '[]'; -- JSON: the GPUs the agent found at enrolment
