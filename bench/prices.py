"""AWS prices the cost model uses: us-east-1, on-demand, in USD. One place, with their date.

TAKEN FROM KNOWLEDGE, NOT FETCHED: these are AWS's public list prices as the author knew them
in January 2025 (aws.amazon.com/lambda/pricing, /api-gateway/pricing, /sagemaker/pricing);
nothing in this repository downloads them. They have been stable for years, but check the
pricing pages before relying on a figure, and update PRICES_AS_OF with the values.
"""

from __future__ import annotations

PRICES_AS_OF = "2025-01 (from the author's knowledge of the AWS pricing pages; not fetched)"
REGION = "us-east-1"

# AWS Lambda: per GB-second of duration (first pricing tier: the first 6 billion GB-s a month
# on x86_64, 7.5 billion on arm64), and per request. Duration is billed per 1 ms.
LAMBDA_GB_SECOND = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
LAMBDA_PER_MILLION_REQUESTS = 0.20

# Amazon API Gateway HTTP APIs: per million requests (first 300 million a month; $0.90 after),
# each request metered in 512 KB increments.
HTTP_API_PER_MILLION_REQUESTS = 1.00

# Amazon SageMaker real-time inference, per instance-hour (an endpoint bills every hour it
# exists, whether or not it serves a request).
SAGEMAKER_REALTIME_PER_HOUR = {
    "ml.t2.medium": 0.056,  # 2 vCPU (burstable), 4 GiB
    "ml.c5.large": 0.102,  # 2 vCPU, 4 GiB
    "ml.m5.large": 0.115,  # 2 vCPU, 8 GiB
}
