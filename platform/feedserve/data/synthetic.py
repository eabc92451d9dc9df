"""Synthetic professional network: members, posts and an interaction log, deterministic by seed.

``generate(DemoConfig(members=..., posts=..., seed=...))`` builds a :class:`DemoDataset`:

* members with a professional profile (title, headline, industry, skills, work history,
  education), a symmetric connection graph biased to shared topics, and demographics drawn
  independently of everything else (they never influence interactions);
* posts written by members, on a topic drawn from the author's interests, in one of four
  formats, with text composed from a per-topic vocabulary so that a text encoder can tell the
  topics apart;
* a time-ordered interaction log: members open sessions, see impressions of posts that exist
  at that moment (topic-matched, network, popular and random posts) and engage with a
  probability that rises sharply with their latent affinity to the post's topic.

The latent affinities (``DemoDataset.affinities``) are ground truth for evaluation; they are not
part of any member profile. All randomness comes from ``np.random.default_rng(cfg.seed)`` (one
independent child stream per stage), so equal configs give equal datasets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from feedserve.contracts import (
    ACTION_TO_COUNT,
    COUNT_KINDS,
    Action,
    ArticleMeta,
    Demographics,
    Education,
    Interaction,
    Member,
    Position,
    Post,
    PostFormat,
    Seniority,
)
from feedserve.store.base import HISTORY_DTYPE

__all__ = [
    "INTERACTION_DTYPE",
    "TOPICS",
    "DemoConfig",
    "DemoDataset",
    "Topic",
    "generate",
]

INTERACTION_DTYPE = np.dtype(
    [("member_id", "<i8"), ("post_id", "<i8"), ("action", "u1"), ("ts", "<i8"), ("dwell_ms", "<i4")]
)
"""One interaction row. ``action`` holds :class:`feedserve.contracts.Action` codes."""

DAY = 86_400
_SLOT_SECONDS = 3 * 3600  # sessions start in distinct 3-hour slots of a member's timeline
_SESSION_GAP = 300  # minimum idle seconds between two sessions of one member
_BACKLOG_SECONDS = 14 * DAY  # how far before start_ts the oldest backlog posts go
_MAX_IMPRESSIONS_PER_SESSION = 40
_KEY = 1 << 36  # time offsets (seconds) stay below this in composite sort keys
_SOURCE_MIX = (0.45, 0.15, 0.15, 0.25)  # impression sources: topic, network, popular, random


@dataclass(frozen=True)
class Topic:
    """A built-in professional topic: who works on it and how people write about it."""

    name: str
    industry: str
    titles: tuple[str, ...]
    exec_titles: tuple[str, ...]
    skills: tuple[str, ...]
    phrases: tuple[str, ...]
    companies: tuple[str, ...]
    domains: tuple[str, ...]
    hashtags: tuple[str, ...]
    study_fields: tuple[str, ...]
    related: tuple[str, ...]
    weight: float


TOPICS: tuple[Topic, ...] = (
    Topic(
        name="machine learning",
        industry="Artificial Intelligence",
        titles=("Machine Learning Engineer", "Data Scientist", "Applied Scientist",
                "Research Scientist"),
        exec_titles=("Head of Machine Learning", "VP of AI", "Director of Applied Science"),
        skills=("Python", "PyTorch", "Deep Learning", "NLP", "Computer Vision",
                "Recommender Systems", "Statistics", "TensorFlow", "LLMs", "Feature Engineering"),
        phrases=("transformer fine-tuning", "model evaluation", "embedding retrieval",
                 "gradient boosting", "large language models", "training data quality",
                 "inference latency", "recommendation models", "reinforcement learning",
                 "model distillation", "vector search", "offline evaluation metrics",
                 "few-shot prompting", "neural ranking"),
        companies=("Nimbus AI", "Gradientworks", "Tensorleaf Labs", "Cortexa"),
        domains=("mlweekly.example", "gradient-notes.example"),
        hashtags=("#MachineLearning", "#AI", "#DeepLearning"),
        study_fields=("Computer Science", "Statistics", "Mathematics"),
        related=("data engineering", "cloud infrastructure"),
        weight=1.4,
    ),
    Topic(
        name="cloud infrastructure",
        industry="Cloud Computing",
        titles=("Site Reliability Engineer", "Platform Engineer", "DevOps Engineer",
                "Cloud Architect"),
        exec_titles=("Head of Infrastructure", "VP of Platform Engineering", "Director of SRE"),
        skills=("Kubernetes", "Terraform", "AWS", "Google Cloud", "Docker", "Linux",
                "Observability", "Go", "Helm", "Networking"),
        phrases=("Kubernetes autoscaling", "infrastructure as code", "service mesh",
                 "multi-region failover", "container orchestration", "on-call rotations",
                 "incident postmortems", "cloud cost optimization", "GPU cluster scheduling",
                 "zero-downtime deployments", "observability dashboards", "serverless functions",
                 "load balancers", "capacity planning"),
        companies=("Stratocore", "Kubeline", "Cirrus Systems", "Orbital Compute"),
        domains=("infraweekly.example", "sre-notes.example"),
        hashtags=("#Kubernetes", "#DevOps", "#CloudComputing"),
        study_fields=("Computer Engineering", "Computer Science"),
        related=("cybersecurity", "data engineering"),
        weight=1.1,
    ),
    Topic(
        name="product management",
        industry="Software",
        titles=("Product Manager", "Product Owner", "Technical Product Manager",
                "Growth Product Manager"),
        exec_titles=("VP of Product", "Chief Product Officer", "Head of Product"),
        skills=("Roadmapping", "User Research", "A/B Testing", "Agile", "Product Strategy", "SQL",
                "Stakeholder Management", "Prioritization", "Go-to-Market", "OKRs"),
        phrases=("product roadmaps", "customer discovery interviews", "feature prioritization",
                 "product-market fit", "A/B test design", "north star metrics",
                 "user onboarding flows", "pricing experiments", "backlog grooming",
                 "product requirement documents", "retention cohorts", "jobs to be done"),
        companies=("Brightpath Software", "Loopwise", "Featurely", "Northbeam Apps"),
        domains=("productcraft.example", "pm-digest.example"),
        hashtags=("#ProductManagement", "#Product"),
        study_fields=("Business Administration", "Economics", "Computer Science"),
        related=("ux design", "careers and leadership", "marketing"),
        weight=1.0,
    ),
    Topic(
        name="ux design",
        industry="Design",
        titles=("UX Designer", "Product Designer", "UX Researcher", "Interaction Designer"),
        exec_titles=("Head of Design", "VP of Design", "Design Director"),
        skills=("Figma", "Prototyping", "User Research", "Design Systems", "Accessibility",
                "Usability Testing", "Information Architecture", "Interaction Design",
                "Visual Design", "Wireframing"),
        phrases=("design systems", "usability testing", "accessible color contrast",
                 "wireframes and prototypes", "user journey maps", "Figma components",
                 "interaction patterns", "typography scales", "inclusive design",
                 "design critiques", "mobile navigation patterns", "microinteractions"),
        companies=("Pixel & Grain", "Formwork Studio", "Kerning Labs", "Hue Collective"),
        domains=("uxcollective.example", "designnotes.example"),
        hashtags=("#UXDesign", "#ProductDesign"),
        study_fields=("Interaction Design", "Graphic Design", "Psychology"),
        related=("product management", "marketing"),
        weight=0.8,
    ),
    Topic(
        name="sales",
        industry="Sales",
        titles=("Account Executive", "Sales Development Representative", "Account Manager",
                "Solutions Consultant"),
        exec_titles=("VP of Sales", "Chief Revenue Officer", "Head of Sales"),
        skills=("Salesforce", "Negotiation", "Pipeline Management", "Cold Outreach",
                "Enterprise Sales", "Forecasting", "Account Planning", "CRM", "Prospecting",
                "Closing"),
        phrases=("pipeline generation", "cold outreach sequences", "enterprise deal cycles",
                 "quota attainment", "discovery calls", "sales forecasting", "objection handling",
                 "account-based selling", "renewal conversations", "procurement negotiations",
                 "sales playbooks", "closing the quarter"),
        companies=("Quotaline", "Dealstream", "Summit Revenue", "Closewell"),
        domains=("salesfloor.example", "revenue-weekly.example"),
        hashtags=("#Sales", "#B2BSales"),
        study_fields=("Business Administration", "Communications"),
        related=("marketing", "careers and leadership"),
        weight=1.0,
    ),
    Topic(
        name="marketing",
        industry="Marketing & Advertising",
        titles=("Marketing Manager", "Content Strategist", "Growth Marketer", "Brand Manager"),
        exec_titles=("Chief Marketing Officer", "VP of Marketing", "Head of Brand"),
        skills=("SEO", "Content Marketing", "Google Analytics", "Copywriting", "Social Media",
                "Email Marketing", "Brand Strategy", "Paid Acquisition", "Marketing Automation",
                "Storytelling"),
        phrases=("brand storytelling", "search engine optimization", "content calendars",
                 "email nurture campaigns", "paid social campaigns", "customer acquisition cost",
                 "marketing attribution", "influencer partnerships", "landing page conversion",
                 "newsletter growth", "brand positioning", "campaign analytics"),
        companies=("Brandwave", "Copperleaf Media", "Reachly", "Storyforge"),
        domains=("marketingweek.example", "growthloop.example"),
        hashtags=("#Marketing", "#ContentMarketing"),
        study_fields=("Marketing", "Communications", "Journalism"),
        related=("sales", "ux design", "product management"),
        weight=1.0,
    ),
    Topic(
        name="finance",
        industry="Financial Services",
        titles=("Financial Analyst", "Investment Associate", "Controller", "Portfolio Manager"),
        exec_titles=("Chief Financial Officer", "VP of Finance", "Head of FP&A"),
        skills=("Financial Modeling", "Excel", "Valuation", "Accounting", "FP&A",
                "Risk Management", "Corporate Finance", "Bloomberg", "Budgeting", "IFRS"),
        phrases=("discounted cash flow models", "quarterly earnings", "interest rate risk",
                 "venture capital funding", "budget forecasting", "portfolio diversification",
                 "cash flow management", "audit readiness", "mergers and acquisitions",
                 "treasury operations", "unit economics", "bond yields"),
        companies=("Ledgerstone Capital", "Meridian Partners", "Fjord Asset Management",
                   "Copperfield Bank"),
        domains=("financedaily.example", "ledger-review.example"),
        hashtags=("#Finance", "#Investing"),
        study_fields=("Finance", "Accounting", "Economics"),
        related=("careers and leadership", "sales"),
        weight=1.0,
    ),
    Topic(
        name="healthcare",
        industry="Hospital & Health Care",
        titles=("Registered Nurse", "Clinical Research Coordinator", "Physician",
                "Health Informatics Specialist"),
        exec_titles=("Chief Medical Officer", "Director of Nursing", "VP of Clinical Operations"),
        skills=("Patient Care", "Clinical Trials", "EHR Systems", "Public Health", "Epidemiology",
                "HIPAA", "Care Coordination", "Medical Devices", "Telehealth", "Health Policy"),
        phrases=("patient outcomes", "clinical trial recruitment", "electronic health records",
                 "nurse staffing", "telehealth visits", "preventive care",
                 "hospital readmission rates", "medical imaging", "care coordination",
                 "public health surveillance", "mental health support", "drug safety monitoring"),
        companies=("Caremont Health", "Vitalis Clinics", "Helix Medical", "St. Aurelia Hospital"),
        domains=("healthbeat.example", "clinical-notes.example"),
        hashtags=("#Healthcare", "#DigitalHealth"),
        study_fields=("Nursing", "Medicine", "Public Health"),
        related=("machine learning", "careers and leadership"),
        weight=0.8,
    ),
    Topic(
        name="cybersecurity",
        industry="Computer & Network Security",
        titles=("Security Engineer", "Security Analyst", "Penetration Tester",
                "Application Security Engineer"),
        exec_titles=("Chief Information Security Officer", "Head of Security",
                     "Director of Security Operations"),
        skills=("Threat Modeling", "SIEM", "Incident Response", "Penetration Testing",
                "Cryptography", "Network Security", "IAM", "Cloud Security",
                "Vulnerability Management", "SOC Operations"),
        phrases=("zero trust architecture", "phishing simulations", "ransomware recovery",
                 "threat intelligence feeds", "vulnerability disclosure",
                 "identity and access management", "security operations center",
                 "supply chain attacks", "penetration test findings", "endpoint detection",
                 "secrets management", "bug bounty programs"),
        companies=("Bastion Security", "Redwall Cyber", "Cipherline", "Aegis Labs"),
        domains=("securityledger.example", "threat-notes.example"),
        hashtags=("#CyberSecurity", "#InfoSec"),
        study_fields=("Computer Science", "Information Security"),
        related=("cloud infrastructure", "data engineering"),
        weight=0.8,
    ),
    Topic(
        name="data engineering",
        industry="Information Technology",
        titles=("Data Engineer", "Analytics Engineer", "Data Platform Engineer", "BI Developer"),
        exec_titles=("Head of Data", "VP of Data Platform", "Director of Data Engineering"),
        skills=("SQL", "Apache Spark", "Airflow", "dbt", "Kafka", "Data Modeling", "Snowflake",
                "ETL", "Python", "Data Warehousing"),
        phrases=("data pipelines", "streaming ingestion", "data warehouse modeling",
                 "dbt transformations", "Airflow DAGs", "data quality checks",
                 "change data capture", "lakehouse tables", "schema evolution",
                 "batch backfills", "Kafka topics", "column-level lineage"),
        companies=("Pipewell Data", "Lakehouse Co", "Streamforge", "Tabular Systems"),
        domains=("dataeng-weekly.example", "pipeline-notes.example"),
        hashtags=("#DataEngineering", "#BigData"),
        study_fields=("Computer Science", "Information Systems"),
        related=("machine learning", "cloud infrastructure"),
        weight=0.9,
    ),
    Topic(
        name="careers and leadership",
        industry="Human Resources",
        titles=("Recruiter", "HR Business Partner", "Talent Acquisition Partner", "Career Coach"),
        exec_titles=("Chief People Officer", "VP of People", "Head of Talent"),
        skills=("Coaching", "Recruiting", "Leadership Development", "Employee Engagement",
                "Performance Management", "Mentoring", "Interviewing", "Organizational Design",
                "Change Management", "Public Speaking"),
        phrases=("first-time managers", "remote team culture", "career growth conversations",
                 "interview preparation", "mentorship programs", "performance reviews",
                 "hiring pipelines", "burnout prevention", "giving feedback",
                 "promotion criteria", "salary negotiation", "building inclusive teams"),
        companies=("Peoplecraft", "Ladderly", "Talentbridge", "Meridian People"),
        domains=("leadlab.example", "careers-digest.example"),
        hashtags=("#Leadership", "#Careers", "#Hiring"),
        study_fields=("Psychology", "Human Resources", "Business Administration"),
        related=("product management", "sales", "finance"),
        weight=1.1,
    ),
    Topic(
        name="climate and energy",
        industry="Renewables & Environment",
        titles=("Energy Analyst", "Sustainability Manager", "Solar Project Engineer",
                "Grid Engineer"),
        exec_titles=("Chief Sustainability Officer", "VP of Energy Projects",
                     "Head of Climate Strategy"),
        skills=("Renewable Energy", "Carbon Accounting", "Energy Modeling", "ESG Reporting",
                "Power Systems", "Life Cycle Assessment", "Battery Storage", "Project Finance",
                "Policy Analysis", "GIS"),
        phrases=("solar farm permitting", "grid-scale battery storage", "carbon accounting",
                 "offshore wind", "heat pump adoption", "emissions reporting",
                 "power purchase agreements", "electric vehicle charging", "green hydrogen",
                 "grid interconnection queues", "net zero targets", "climate risk disclosure"),
        companies=("Helios Renewables", "Windmere Energy", "Gridshift", "Verdant Power"),
        domains=("cleantech-weekly.example", "gridnotes.example"),
        hashtags=("#ClimateTech", "#RenewableEnergy"),
        study_fields=("Environmental Science", "Electrical Engineering"),
        related=("finance", "data engineering"),
        weight=0.7,
    ),
)  # fmt: skip
"""The built-in topics; ``DemoConfig.topics = k`` uses the first ``k``."""

_FIRST_NAMES = (
    "Aisha", "Alejandro", "Amara", "Ana", "Ananya", "Aoife", "Arjun", "Beatriz", "Ben", "Björn",
    "Chiara", "Chloé", "Daniel", "David", "Elena", "Emeka", "Emily", "Fatima", "François",
    "Grace", "Hannah", "Hiroshi", "Ingrid", "Isabel", "James", "José", "Julia", "Kenji", "Laura",
    "Léa", "Liam", "Lucas", "Łukasz", "Maria", "Mateo", "Mei", "Mohammed", "Nadia", "Noah",
    "Olivia", "Omar", "Priya", "Rafael", "Ravi", "Sara", "Sofia", "Søren", "Thomas", "Wei",
    "Yuki", "Zainab", "Zoë",
)  # fmt: skip
_LAST_NAMES = (
    "Adeyemi", "Andersen", "Bianchi", "Brown", "Chen", "Costa", "Dubois", "Dvořák", "Fernández",
    "García", "Gómez", "Hansen", "Ivanova", "Johnson", "Kim", "Kowalski", "Kumar", "Larsen",
    "Lee", "Martin", "Müller", "Nakamura", "Nguyễn", "Novak", "O'Brien", "Okafor", "Patel",
    "Pereira", "Rossi", "Schmidt", "Silva", "Singh", "Smith", "Takahashi", "Williams", "Wójcik",
    "Yılmaz", "Zhang", "Øyen",
)  # fmt: skip
_FULL_NAMES_CJK = ("李娜", "王伟", "张敏", "刘洋", "陈静", "佐藤 花子", "김민준")
_LOCATIONS = (
    "San Francisco, CA", "New York, NY", "Seattle, WA", "Austin, TX", "Toronto, Canada",
    "Montréal, Canada", "London, UK", "Dublin, Ireland", "Berlin, Germany", "München, Germany",
    "Zürich, Switzerland", "Paris, France", "Amsterdam, Netherlands", "København, Denmark",
    "Kraków, Poland", "São Paulo, Brazil", "Bogotá, Colombia", "Lagos, Nigeria",
    "Nairobi, Kenya", "Bangalore, India", "Singapore", "Tokyo, Japan", "Sydney, Australia",
    "Tel Aviv, Israel",
)  # fmt: skip
_SCHOOLS = (
    "University of Washington", "Georgia Institute of Technology", "University of Toronto",
    "ETH Zürich", "Technische Universität München", "Københavns Universitet",
    "Uniwersytet Jagielloński", "Universidade de São Paulo", "Universidad de los Andes",
    "University of Lagos", "Indian Institute of Technology Bombay",
    "National University of Singapore",
    "University of Tokyo", "Trinity College Dublin", "University of Edinburgh",
    "Sciences Po", "Tsinghua University", "University of Michigan", "McGill University",
)  # fmt: skip
_BACHELOR = ("BSc", "BA", "BEng")
_GRADUATE = ("MSc", "MBA", "PhD", "MA")
_SENIORITIES = tuple(Seniority)
_SENIORITY_P = (0.2, 0.3, 0.27, 0.13, 0.1)
_SENIORITY_PREFIX: dict[Seniority, tuple[str, ...]] = {
    Seniority.entry: ("Junior ", "Associate "),
    Seniority.mid: ("",),
    Seniority.senior: ("Senior ",),
    Seniority.lead: ("Lead ", "Staff ", "Principal "),
}
_YEARS_OF_EXPERIENCE: dict[Seniority, tuple[int, int]] = {
    Seniority.entry: (0, 2),
    Seniority.mid: (2, 6),
    Seniority.senior: (5, 12),
    Seniority.lead: (8, 18),
    Seniority.executive: (12, 30),
}
_AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
_AGE_P = (0.14, 0.34, 0.25, 0.15, 0.09, 0.03)
_GENDERS = ("female", "male", "non-binary")
_GENDER_P = (0.48, 0.48, 0.04)

_FORMATS = (PostFormat.text, PostFormat.image, PostFormat.video, PostFormat.article)
_FORMAT_P = (0.45, 0.25, 0.12, 0.18)
_CLICK_P = np.array([0.45, 0.35, 0.75, 0.9])  # per format: see-more / open / play / read
_DWELL_MEDIAN_S = np.array([12.0, 6.0, 40.0, 0.0])  # articles use reading_minutes instead

_SENTENCES = (
    "Just wrapped up a project on {a}, and the results surprised our whole team.",
    "Hot take: {a} matters more than {b}.",
    "Three lessons from a year of working on {a}: start small, measure everything, write it down.",
    "We are hiring people who care deeply about {a} and {b}.",
    "Our team saved weeks of work by rethinking how we approach {a}.",
    "If you work on {a}, how do you handle {b}?",
    "Sharing my notes from a great conference talk on {a}.",
    "Grateful to everyone who taught me about {a} early in my career.",
    "Spent the weekend reading about {a}; the section on {b} was excellent.",
    "Unpopular opinion: most problems with {a} are really problems with {b}.",
    "A short thread on what nobody tells you about {a}.",
    "Big milestone today: we finally launched our work on {a}!",
    "Curious how other teams measure success with {a}.",
    "Five years ago I knew nothing about {a}; today my team focuses on {b}.",
)
_ARTICLE_TITLES = (
    "A practical guide to {a}",
    "Why {a} is harder than it looks",
    "What we learned running {a} in production",
    "The state of {a} in {year}",
    "{A}: a field guide for busy teams",
    "How to get started with {a}",
)
_HEADLINES = (
    "{title} at {company}",
    "{title} · {s1} · {s2}",
    "{title} | {A} enthusiast",
    "{title} at {company} — helping teams with {a}",
    "{title} | {s1} & {s2}",
)
_EMOJI = ("🚀", "💡", "🙌", "📈", "🔥", "✅", "🌱")
_GREETINGS = ("Merci à toute l'équipe !", "¡Gracias, equipo!", "Danke schön an alle!",
              "Tack så mycket!", "Dziękuję wszystkim!")  # fmt: skip

_T = TypeVar("_T")


@dataclass(frozen=True)
class DemoConfig:
    """What to generate. Equal configs give byte-identical datasets."""

    members: int
    posts: int
    seed: int
    days: int = 30
    topics: int = len(TOPICS)
    start_ts: int = 1_767_225_600  # 2026-01-01T00:00:00Z
    impressions_per_member: float = 50.0
    """Target mean number of sessions × impressions per member (before de-duplication)."""
    impressions_per_session: float = 8.0
    avg_connections: float = 16.0
    max_connections: int = 60
    engagement_sharpness: float = 6.0
    """Logit slope of engagement in the member's affinity to the post topic."""
    engagement_bias: float = -4.5
    """Logit intercept of engagement (affinity 0, average quality, not a connection)."""
    connection_bonus: float = 0.8
    """Logit bonus when the post's author is a connection of the member."""
    affinity_floor: float = 0.1
    """Share of each member's affinity mass spread over all topics."""
    backlog_fraction: float = 0.1
    """Share of posts created in the two weeks before ``start_ts``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in (int, "int"):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError(f"DemoConfig.{f.name} must be an int, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"DemoConfig.{f.name} must be a number, got {value!r}")
            else:
                object.__setattr__(self, f.name, float(value))
        checks: list[tuple[bool, str]] = [
            (self.members >= 2, f"members must be >= 2, got {self.members}"),
            (self.members <= 10_000_000, f"members must be <= 10000000, got {self.members}"),
            (self.posts >= 1, f"posts must be >= 1, got {self.posts}"),
            (self.posts <= 100_000_000, f"posts must be <= 100000000, got {self.posts}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (1 <= self.days <= 3650, f"days must be in 1..3650, got {self.days}"),
            (
                1 <= self.topics <= len(TOPICS),
                f"topics must be in 1..{len(TOPICS)} (built-in topics), got {self.topics}",
            ),
            (self.start_ts >= 0, f"start_ts must be >= 0, got {self.start_ts}"),
            (
                0 < self.impressions_per_member <= 10_000,
                f"impressions_per_member must be in (0, 10000], got {self.impressions_per_member}",
            ),
            (
                1 <= self.impressions_per_session <= _MAX_IMPRESSIONS_PER_SESSION,
                f"impressions_per_session must be in 1..{_MAX_IMPRESSIONS_PER_SESSION}, "
                f"got {self.impressions_per_session}",
            ),
            (self.avg_connections >= 0, "avg_connections must be >= 0"),
            (self.max_connections >= 1, "max_connections must be >= 1"),
            (self.engagement_sharpness >= 0, "engagement_sharpness must be >= 0"),
            (-20 <= self.engagement_bias <= 20, "engagement_bias must be in [-20, 20]"),
            (self.connection_bonus >= 0, "connection_bonus must be >= 0"),
            (0 <= self.affinity_floor < 1, "affinity_floor must be in [0, 1)"),
            (0 <= self.backlog_fraction <= 1, "backlog_fraction must be in [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid DemoConfig: {message}")

    @property
    def end_ts(self) -> int:
        """End of the simulated period (exclusive): ``start_ts + days * 86400``."""
        return self.start_ts + self.days * DAY


@dataclass(eq=False)
class DemoDataset:
    """A generated (or loaded) demo network. Ids: members ``1..N``, posts ``1..M``, in order."""

    config: DemoConfig
    topics: list[str]
    members: list[Member]
    posts: list[Post]
    interactions: np.ndarray
    """``INTERACTION_DTYPE`` rows sorted by ``ts``, then member, post and action code."""
    affinities: np.ndarray
    """Ground-truth float32 ``[n_members, n_topics]``; row ``i`` is member ``i + 1``."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DemoDataset):
            return NotImplemented
        return (
            self.config == other.config
            and self.topics == other.topics
            and self.members == other.members
            and self.posts == other.posts
            and self.interactions.dtype == other.interactions.dtype
            and np.array_equal(self.interactions, other.interactions)
            and self.affinities.dtype == other.affinities.dtype
            and np.array_equal(self.affinities, other.affinities)
        )

    __hash__ = None  # type: ignore[assignment]

    def member_top_topics(self, member_id: int, n: int = 2) -> list[str]:
        """The member's ``n`` highest-affinity topics, best first (ground truth)."""
        if not 1 <= member_id <= len(self.affinities):
            raise KeyError(f"unknown member_id {member_id} (valid: 1..{len(self.affinities)})")
        row = self.affinities[member_id - 1]
        order = np.argsort(-row, kind="stable")[: max(n, 0)]
        return [self.topics[int(i)] for i in order]

    def post_topic_ids(self) -> np.ndarray:
        """int64 topic index (into ``topics``) of each post, aligned with ``posts``."""
        index = {t: i for i, t in enumerate(self.topics)}
        return np.fromiter(
            (index[p.topic] for p in self.posts), dtype=np.int64, count=len(self.posts)
        )

    def engagement_counts(self) -> dict[str, np.ndarray]:
        """Per ``COUNT_KINDS`` kind, an int64 count per post (aligned with ``posts``)."""
        post_ids = np.fromiter(
            (p.post_id for p in self.posts), dtype=np.int64, count=len(self.posts)
        )
        order = np.argsort(post_ids, kind="stable")
        rows = self.interactions
        pos = np.searchsorted(post_ids[order], rows["post_id"])
        pos = np.minimum(pos, len(post_ids) - 1)
        known = post_ids[order][pos] == rows["post_id"]
        out: dict[str, np.ndarray] = {}
        for kind in COUNT_KINDS:
            codes = [int(a) for a, k in ACTION_TO_COUNT.items() if k == kind]
            mask = known & np.isin(rows["action"], codes)
            counts_sorted = np.bincount(pos[mask], minlength=len(post_ids)).astype(np.int64)
            counts = np.zeros(len(post_ids), dtype=np.int64)
            counts[order] = counts_sorted
            out[kind] = counts
        return out

    def histories(self) -> dict[int, np.ndarray]:
        """Every member's full history as ``HISTORY_DTYPE`` (oldest first); empty if none."""
        rows = self.interactions
        order = np.lexsort((rows["action"], rows["post_id"], rows["ts"], rows["member_id"]))
        rows = rows[order]
        ids = [m.member_id for m in self.members]
        starts = np.searchsorted(rows["member_id"], ids, side="left")
        ends = np.searchsorted(rows["member_id"], ids, side="right")
        out: dict[int, np.ndarray] = {}
        for member_id, lo, hi in zip(ids, starts.tolist(), ends.tolist(), strict=True):
            part = rows[lo:hi]
            hist = np.empty(len(part), dtype=HISTORY_DTYPE)
            hist["post_id"] = part["post_id"]
            hist["ts"] = part["ts"]
            hist["action"] = part["action"]
            out[member_id] = hist
        return out

    def iter_interactions(self) -> Iterator[Interaction]:
        """The log as :class:`Interaction` records, in log order (slow; for small data)."""
        for m, p, a, ts, dwell in self.interactions.tolist():
            yield Interaction(member_id=m, post_id=p, action=Action(a), ts=ts, dwell_ms=dwell)


class _Draws:
    """Uniform draws from a generator, buffered (fast scalar picks, still deterministic)."""

    def __init__(self, rng: np.random.Generator, chunk: int = 8192) -> None:
        self._rng = rng
        self._chunk = chunk
        self._buf: list[float] = []
        self._i = 0

    def u(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._rng.random(self._chunk).tolist()
            self._i = 0
        value = self._buf[self._i]
        self._i += 1
        return value

    def pick(self, seq: Sequence[_T]) -> _T:
        return seq[int(self.u() * len(seq))]

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in ``lo..hi`` inclusive."""
        return lo + int(self.u() * (hi - lo + 1))

    def chance(self, p: float) -> bool:
        return self.u() < p

    def weighted(self, cdf: Sequence[float]) -> int:
        """Index drawn from a cumulative distribution (last entry = total mass)."""
        x = self.u() * cdf[-1]
        for i, c in enumerate(cdf):
            if x < c:
                return i
        return len(cdf) - 1


def _sample_rows(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row of probabilities ``p`` (not necessarily normalized), an index drawn with ``u``."""
    cdf = np.cumsum(p, axis=1, dtype=np.float64)
    x = u * cdf[:, -1]
    idx = (cdf <= x[:, None]).sum(axis=1)
    return np.minimum(idx, p.shape[1] - 1).astype(np.int64)


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- stage 1: latent interests ------------------------------------------------------------------


def _affinities(
    cfg: DemoConfig, topics: Sequence[Topic], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(primary topic per member, float32 affinity matrix with rows summing to 1)."""
    n, t = cfg.members, len(topics)
    weights = np.array([tp.weight for tp in topics])
    primary = rng.choice(t, size=n, p=weights / weights.sum()).astype(np.int64)
    n_main = rng.choice(3, size=n, p=(0.35, 0.45, 0.2)) + 1
    mix = rng.gamma(np.array([4.0, 2.0, 1.5]), size=(n, 3))
    floor = rng.dirichlet(np.full(t, 4.0), size=n)
    draws = rng.random((n, 4))
    index = {tp.name: i for i, tp in enumerate(topics)}
    related = [[index[r] for r in tp.related if r in index] for tp in topics]
    aff = floor * cfg.affinity_floor
    for i in range(n):
        chosen = [int(primary[i])]
        for j in range(1, min(int(n_main[i]), t)):
            near = [r for r in related[chosen[0]] if r not in chosen]
            if near and draws[i, 2 * j - 2] < 0.7:
                chosen.append(near[int(draws[i, 2 * j - 1] * len(near))])
            else:
                others = [k for k in range(t) if k not in chosen]
                chosen.append(others[int(draws[i, 2 * j - 1] * len(others))])
        w = mix[i, : len(chosen)]
        aff[i, chosen] += (1.0 - cfg.affinity_floor) * w / w.sum()
    aff /= aff.sum(axis=1, keepdims=True)
    return primary, aff.astype(np.float32)


# --- stage 2: connection graph ------------------------------------------------------------------


def _connections(
    cfg: DemoConfig, primary: np.ndarray, aff: np.ndarray, rng: np.random.Generator
) -> list[list[int]]:
    """Symmetric adjacency lists (0-based member indexes), biased to shared topics."""
    n, t = aff.shape
    target = min(cfg.avg_connections, n - 1)
    social = rng.lognormal(0.0, 0.5, n)
    social /= social.mean()
    proposals = rng.poisson(target / 2.0 * social)
    src = np.repeat(np.arange(n, dtype=np.int64), proposals)
    e = len(src)
    topic = _sample_rows(aff[src], rng.random(e))
    group_order = np.argsort(primary, kind="stable")
    group_size = np.bincount(primary, minlength=t)
    group_start = np.concatenate([[0], np.cumsum(group_size)[:-1]])
    in_group = group_start[topic] + (rng.random(e) * group_size[topic]).astype(np.int64)
    by_topic = group_order[np.minimum(in_group, n - 1)]
    uniform = rng.integers(0, n, e)
    use_topic = (rng.random(e) < 0.7) & (group_size[topic] > 0)
    dst = np.where(use_topic, by_topic, uniform)
    keep = src != dst
    lo = np.minimum(src, dst)[keep]
    hi = np.maximum(src, dst)[keep]
    keys = np.unique(lo * n + hi)
    keys = keys[rng.permutation(len(keys))]
    cap = cfg.max_connections
    degree = [0] * n
    adj: list[list[int]] = [[] for _ in range(n)]
    for key in keys.tolist():
        a, b = divmod(key, n)
        if degree[a] < cap and degree[b] < cap:
            degree[a] += 1
            degree[b] += 1
            adj[a].append(b)
            adj[b].append(a)
    for row in adj:
        row.sort()
    return adj


# --- stage 3: post skeleton ---------------------------------------------------------------------


MAX_FOLLOWS = 5
"""Most authors a member follows without being connected to them."""


@dataclass
class _PostFrame:
    author: np.ndarray  # 0-based member index
    topic: np.ndarray
    fmt: np.ndarray  # index into _FORMATS
    created: np.ndarray
    quality: np.ndarray
    reading_minutes: np.ndarray


def _post_frame(cfg: DemoConfig, aff: np.ndarray, rng: np.random.Generator) -> _PostFrame:
    n, m = cfg.members, cfg.posts
    prolific = rng.lognormal(0.0, 1.0, n)
    author = rng.choice(n, size=m, p=prolific / prolific.sum()).astype(np.int64)
    topic = _sample_rows(aff[author], rng.random(m))
    fmt = rng.choice(len(_FORMATS), size=m, p=_FORMAT_P).astype(np.int64)
    backlog = rng.random(m) < cfg.backlog_fraction
    before = cfg.start_ts - 1 - (rng.random(m) * _BACKLOG_SECONDS).astype(np.int64)
    during = cfg.start_ts + (rng.random(m) * cfg.days * DAY).astype(np.int64)
    created = np.maximum(np.where(backlog, before, during), 0)
    quality = rng.normal(0.0, 0.5, m)
    reading = rng.integers(2, 21, m)
    return _PostFrame(author, topic, fmt, created, quality, reading)


def _follows(
    cfg: DemoConfig,
    aff: np.ndarray,
    adj: list[list[int]],
    frame: _PostFrame,
    rng: np.random.Generator,
) -> list[list[int]]:
    """0-based member indices each member follows: 0..MAX_FOLLOWS authors (not connections),
    drawn by how much the author's posts match the member's topic affinities."""
    authors = np.unique(frame.author)
    if len(authors) == 0:
        return [[] for _ in range(cfg.members)]
    # an author's topic profile: the share of their posts in each topic
    profile = np.zeros((len(authors), aff.shape[1]))
    np.add.at(profile, (np.searchsorted(authors, frame.author), frame.topic), 1.0)
    profile /= profile.sum(axis=1, keepdims=True)
    counts = rng.integers(0, MAX_FOLLOWS + 1, size=cfg.members)
    out: list[list[int]] = []
    for i in range(cfg.members):
        match = (profile @ aff[i]) ** 2
        match[authors == i] = 0.0
        match[np.isin(authors, adj[i])] = 0.0
        k = min(int(counts[i]), int((match > 0).sum()))
        if k == 0:
            out.append([])
            continue
        picked = rng.choice(len(authors), size=k, replace=False, p=match / match.sum())
        out.append(sorted(int(a) for a in authors[picked]))
    return out


# --- stage 4: profiles and texts ----------------------------------------------------------------


def _title(topic: Topic, seniority: Seniority, d: _Draws) -> str:
    if seniority is Seniority.executive:
        return d.pick(topic.exec_titles)
    return d.pick(_SENIORITY_PREFIX[seniority]) + d.pick(topic.titles)


def _name(d: _Draws) -> str:
    if d.chance(0.06):
        return d.pick(_FULL_NAMES_CJK)
    return f"{d.pick(_FIRST_NAMES)} {d.pick(_LAST_NAMES)}"


def _members(
    cfg: DemoConfig,
    topics: Sequence[Topic],
    primary: np.ndarray,
    aff: np.ndarray,
    adj: list[list[int]],
    follows: list[list[int]],
    rng: np.random.Generator,
    demo_rng: np.random.Generator,
    progress: bool,
) -> list[Member]:
    n = cfg.members
    d = _Draws(rng)
    year = datetime.fromtimestamp(cfg.start_ts, tz=UTC).year
    seniority_idx = rng.choice(len(_SENIORITIES), size=n, p=_SENIORITY_P)
    # Demographics come from their own stream: independent of every other attribute.
    ages = demo_rng.choice(len(_AGE_BANDS), size=n, p=_AGE_P)
    genders = demo_rng.choice(len(_GENDERS), size=n, p=_GENDER_P)
    cdfs = np.cumsum(aff.astype(np.float64), axis=1).tolist()
    members: list[Member] = []
    for i in tqdm(range(n), desc="members", unit="member", disable=not progress):
        main = topics[int(primary[i])]
        seniority = _SENIORITIES[int(seniority_idx[i])]
        title = _title(main, seniority, d)

        n_skills = d.randint(3, 10)
        skills: list[str] = []
        for _ in range(4 * n_skills):
            if len(skills) >= n_skills:
                break
            src = topics[d.weighted(cdfs[i])] if d.chance(0.92) else d.pick(topics)
            skill = d.pick(src.skills)
            if skill not in skills:
                skills.append(skill)

        lo, hi = _YEARS_OF_EXPERIENCE[seniority]
        experience = d.randint(lo, hi)
        n_positions = max(1, min(4, 1 + experience // 4 + d.randint(-1, 1)))
        positions: list[Position] = []
        end: int | None = None
        cursor = year
        level = _SENIORITIES.index(seniority)
        for k in range(n_positions):
            tenure = max(1, d.randint(1, max(1, experience // n_positions + 1)))
            start = cursor - tenure
            pos_topic = main if k == 0 or d.chance(0.7) else topics[d.weighted(cdfs[i])]
            pos_title = title if k == 0 else _title(pos_topic, _SENIORITIES[max(0, level - k)], d)
            positions.append(
                Position(
                    title=pos_title,
                    company=d.pick(pos_topic.companies),
                    start_year=start,
                    end_year=end,
                )
            )
            end = start
            cursor = start
        company = positions[0].company

        education: list[Education] = []
        n_edu = d.weighted((0.15, 0.75, 1.0))
        for k in range(n_edu):
            field_topic = main if d.chance(0.8) else d.pick(topics)
            education.append(
                Education(
                    school=d.pick(_SCHOOLS),
                    degree=d.pick(_BACHELOR if k == 0 else _GRADUATE),
                    field=d.pick(field_topic.study_fields),
                )
            )

        phrase = d.pick(main.phrases)
        s1 = skills[0]
        s2 = skills[1] if len(skills) > 1 else d.pick(main.skills)
        headline = d.pick(_HEADLINES).format(
            title=title, company=company, s1=s1, s2=s2, a=phrase, A=_upper_first(phrase)
        )
        if d.chance(0.08):
            headline += " " + d.pick(_EMOJI)

        members.append(
            Member(
                member_id=i + 1,
                name=_name(d),
                headline=headline,
                title=title,
                industry=main.industry,
                seniority=seniority,
                location=d.pick(_LOCATIONS),
                skills=skills,
                positions=positions,
                education=education,
                connections=[j + 1 for j in adj[i]],
                follows=[j + 1 for j in follows[i]],
                demographics=Demographics(
                    age_band=_AGE_BANDS[int(ages[i])], gender=_GENDERS[int(genders[i])]
                ),
            )
        )
    return members


def _phrases(topic: Topic, d: _Draws) -> tuple[str, str]:
    a = d.pick(topic.phrases)
    b = d.pick(topic.phrases)
    while b == a:
        b = d.pick(topic.phrases)
    return a, b


def _posts(
    cfg: DemoConfig, topics: Sequence[Topic], frame: _PostFrame, rng: np.random.Generator
) -> list[Post]:
    d = _Draws(rng)
    year = datetime.fromtimestamp(cfg.start_ts, tz=UTC).year
    posts: list[Post] = []
    for j in range(cfg.posts):
        topic = topics[int(frame.topic[j])]
        fmt = _FORMATS[int(frame.fmt[j])]
        sentences: list[str] = []
        article: ArticleMeta | None = None
        if fmt is PostFormat.article:
            a, _ = _phrases(topic, d)
            title = d.pick(_ARTICLE_TITLES).format(a=a, A=_upper_first(a), year=year)
            article = ArticleMeta(
                title=title,
                domain=d.pick(topic.domains),
                reading_minutes=int(frame.reading_minutes[j]),
            )
            sentences.append(f"New article: “{title}”.")
        n_sentences = d.randint(1, 3) if sentences else d.randint(1, 4)
        used: set[int] = set()
        for _ in range(n_sentences):
            k = int(d.u() * len(_SENTENCES))
            if k in used:
                continue
            used.add(k)
            a, b = _phrases(topic, d)
            sentences.append(_SENTENCES[k].format(a=a, b=b))
        if not sentences:
            a, b = _phrases(topic, d)
            sentences.append(_SENTENCES[0].format(a=a, b=b))
        if d.chance(0.04):
            sentences.append(d.pick(_GREETINGS))
        text = " ".join(sentences)
        if d.chance(0.12):
            text += " " + d.pick(_EMOJI)
        if d.chance(0.35):
            text += "\n\n" + " ".join(sorted({d.pick(topic.hashtags), d.pick(topic.hashtags)}))
        posts.append(
            Post(
                post_id=j + 1,
                author_id=int(frame.author[j]) + 1,
                format=fmt,
                topic=topic.name,
                text=text,
                created_at=int(frame.created[j]),
                article=article,
            )
        )
    return posts


# --- stage 5: sessions, impressions, engagement -------------------------------------------------


def _pick_recent(
    group: np.ndarray,
    created: np.ndarray,
    base: int,
    q_group: np.ndarray,
    q_time: np.ndarray,
    u: np.ndarray,
) -> np.ndarray:
    """For each query, a post of ``q_group`` created at or before ``q_time``, skewed to recent.

    Returns 0-based post indexes, or -1 where the group has no post yet.
    """
    order = np.lexsort((created, group))
    keys = group[order] * _KEY + (created[order] - base)
    group_start = np.searchsorted(group[order], q_group, side="left")
    pos = np.searchsorted(keys, q_group * _KEY + (q_time - base), side="right")
    count = pos - group_start
    idx = pos - 1 - (count * u * u).astype(np.int64)
    found = count > 0
    safe = np.clip(idx, 0, max(len(order) - 1, 0))
    return np.where(found, order[safe], -1)


def _interactions(
    cfg: DemoConfig,
    aff: np.ndarray,
    adj: list[list[int]],
    frame: _PostFrame,
    rng: np.random.Generator,
) -> np.ndarray:
    n, m = cfg.members, cfg.posts
    base = int(min(int(frame.created.min()), cfg.start_ts))

    # Sessions: distinct 3-hour slots per member, more for more active members.
    n_slots = cfg.days * DAY // _SLOT_SECONDS
    activity = rng.lognormal(0.0, 0.6, n)
    activity /= activity.mean()
    mean_sessions = cfg.impressions_per_member / cfg.impressions_per_session
    n_sessions = np.minimum(rng.poisson(mean_sessions * activity), n_slots)
    s_member = np.repeat(np.arange(n, dtype=np.int64), n_sessions)
    slot = rng.integers(0, n_slots, len(s_member))
    session_key = np.unique(s_member * n_slots + slot)
    s_member = session_key // n_slots
    n_sess = len(session_key)
    draft_start = (
        cfg.start_ts
        + (session_key % n_slots) * _SLOT_SECONDS
        + rng.integers(0, _SLOT_SECONDS, n_sess)
    )

    # Impression slots and where each one comes from.
    n_imp = np.minimum(
        1 + rng.poisson(cfg.impressions_per_session - 1.0, n_sess), _MAX_IMPRESSIONS_PER_SESSION
    )
    i_sess = np.repeat(np.arange(n_sess, dtype=np.int64), n_imp)
    i_member = s_member[i_sess]
    i_time = draft_start[i_sess]
    total = len(i_sess)
    mix = np.cumsum(_SOURCE_MIX) / sum(_SOURCE_MIX)
    source = np.minimum(np.searchsorted(mix, rng.random(total), side="right"), 3)
    u_pick = rng.random((4, total))

    by_time = np.argsort(frame.created, kind="stable")
    created_sorted = frame.created[by_time]
    n_exist = np.searchsorted(created_sorted, i_time, side="right")
    exists = n_exist > 0
    recent_idx = n_exist - 1 - (n_exist * u_pick[0] ** 2).astype(np.int64)
    post = np.where(exists, by_time[np.clip(recent_idx, 0, m - 1)], -1)

    # topic-matched: a topic drawn from the member's affinities, then a recent post on it
    sel = np.flatnonzero(source == 0)
    if len(sel):
        t = _sample_rows(aff[i_member[sel]], u_pick[1, sel])
        found = _pick_recent(frame.topic, frame.created, base, t, i_time[sel], u_pick[2, sel])
        post[sel] = np.where(found >= 0, found, post[sel])

    # network: a recent post by a random connection
    degree = np.array([len(row) for row in adj], dtype=np.int64)
    conn_start = np.concatenate([[0], np.cumsum(degree)[:-1]])
    conn_flat = np.fromiter(
        (j for row in adj for j in row), dtype=np.int64, count=int(degree.sum())
    )
    sel = np.flatnonzero((source == 1) & (degree[i_member] > 0))
    if len(sel):
        mem = i_member[sel]
        friend = conn_flat[conn_start[mem] + (u_pick[1, sel] * degree[mem]).astype(np.int64)]
        found = _pick_recent(frame.author, frame.created, base, friend, i_time[sel], u_pick[2, sel])
        post[sel] = np.where(found >= 0, found, post[sel])

    # popular: existing posts weighted by latent quality
    sel = np.flatnonzero((source == 2) & exists)
    if len(sel):
        weight = np.cumsum(np.exp(3.0 * frame.quality[by_time]))
        limit = n_exist[sel] - 1
        target = u_pick[3, sel] * weight[limit]
        idx = np.minimum(np.searchsorted(weight, target, side="right"), limit)
        post[sel] = by_time[idx]

    # Drop empty slots and own posts; keep each (member, post) pair's first impression only.
    keep = (post >= 0) & (frame.author[np.maximum(post, 0)] != i_member)
    i_sess, i_member, post = i_sess[keep], i_member[keep], post[keep]
    _, first = np.unique(i_member * m + post, return_index=True)
    first.sort()
    i_sess, i_member, post = i_sess[first], i_member[first], post[first]
    total = len(post)

    # Engagement: sharp in topic affinity, plus post quality and an author-is-connection bonus.
    edge_keys = np.sort(np.repeat(np.arange(n, dtype=np.int64), degree) * n + conn_flat)
    query = i_member * n + frame.author[post]
    at = np.minimum(np.searchsorted(edge_keys, query), max(len(edge_keys) - 1, 0))
    is_friend = (edge_keys[at] == query) if len(edge_keys) else np.zeros(total, dtype=bool)
    affinity = aff[i_member, frame.topic[post]].astype(np.float64)
    logit = (
        cfg.engagement_bias
        + cfg.engagement_sharpness * affinity
        + frame.quality[post]
        + cfg.connection_bonus * is_friend
    )
    engaged = rng.random(total) < 1.0 / (1.0 + np.exp(-logit))

    # What an engaged impression does, and how long it takes.
    e = np.flatnonzero(engaged)
    fmt = frame.fmt[post[e]]
    u = rng.random((6, len(e)))
    click = u[0] < _CLICK_P[fmt]
    like = u[1] < 0.55
    comment = u[2] < 0.12
    share = u[3] < 0.06
    dwell = u[4] < 0.6
    like |= ~(click | like | comment | share | dwell)
    median = np.where(
        fmt == _FORMATS.index(PostFormat.article),
        frame.reading_minutes[post[e]] * 60.0 * 0.4,
        _DWELL_MEDIAN_S[fmt],
    )
    dwell_s = np.clip(median * np.exp(rng.normal(0.0, 0.6, len(e))), 1.0, 900.0)
    dwell_ms = (dwell_s * 1000.0).astype(np.int64)
    click_delay = rng.integers(1, 6, len(e))
    span = np.where(dwell, (dwell_ms + 999) // 1000, rng.integers(3, 31, len(e)))
    busy = np.zeros(total, dtype=np.int64)
    busy[e] = click_delay + span + 1

    # Timeline: within a session, impressions follow each other (scroll gap + time engaged).
    step = rng.integers(2, 21, total) + busy
    before = np.cumsum(step) - step
    sess_first = np.full(n_sess, -1, dtype=np.int64)
    uniq_sess, first_of = np.unique(i_sess, return_index=True)
    sess_first[uniq_sess] = first_of
    offset = before - before[sess_first[i_sess]]
    duration = np.bincount(i_sess, weights=step, minlength=n_sess).astype(np.int64)
    # Sessions of one member never overlap: push a session back while the previous one runs.
    # start_k = max(draft_k, start_{k-1} + duration_{k-1} + gap), computed as a running max.
    # ``c`` restarts at each member's first session; ``band`` keeps members apart in the scan.
    need = duration + _SESSION_GAP
    c = np.cumsum(need) - need
    c -= c[np.searchsorted(s_member, s_member, side="left")]
    band = s_member * (np.int64(1) << 40)
    shifted = np.maximum.accumulate(draft_start - cfg.start_ts - c + band)
    start = cfg.start_ts + shifted + c - band
    imp_ts = start[i_sess] + offset

    # Assemble rows: impressions, then each engagement action of the engaged impressions.
    e_ts = imp_ts[e]
    u_at = rng.random((3, len(e)))
    parts: list[tuple[np.ndarray, Action, np.ndarray, np.ndarray]] = [
        (np.arange(total), Action.impression, imp_ts, np.zeros(total, dtype=np.int64)),
    ]
    zeros_e = np.zeros(len(e), dtype=np.int64)
    mid = e_ts + click_delay
    for mask, action, ts, dwell_col in (
        (click, Action.click, e_ts + click_delay, zeros_e),
        (like, Action.like, mid + (u_at[0] * span).astype(np.int64), zeros_e),
        (comment, Action.comment, mid + (u_at[1] * span).astype(np.int64), zeros_e),
        (share, Action.share, mid + (u_at[2] * span).astype(np.int64), zeros_e),
        (dwell, Action.dwell, mid + span, dwell_ms),
    ):
        parts.append((e[mask], action, ts[mask], dwell_col[mask]))
    size = sum(len(p[0]) for p in parts)
    out = np.empty(size, dtype=INTERACTION_DTYPE)
    at_row = 0
    for rows, action, ts, dwell_col in parts:
        k = len(rows)
        out["member_id"][at_row : at_row + k] = i_member[rows] + 1
        out["post_id"][at_row : at_row + k] = post[rows] + 1
        out["action"][at_row : at_row + k] = int(action)
        out["ts"][at_row : at_row + k] = ts
        out["dwell_ms"][at_row : at_row + k] = dwell_col
        at_row += k
    order = np.lexsort((out["action"], out["post_id"], out["member_id"], out["ts"]))
    return out[order]


def generate(cfg: DemoConfig, progress: bool = False) -> DemoDataset:
    """Generate the demo network for ``cfg``; ``progress`` shows a bar over members."""
    root = np.random.default_rng(cfg.seed)
    # spawn(8) keeps the first seven streams of the former spawn(7): adding the follow
    # graph left every other generated value unchanged
    streams = root.spawn(8)
    rng_aff, rng_graph, rng_frame, rng_prof, rng_demo, rng_text, rng_log, rng_follow = streams
    topics = TOPICS[: cfg.topics]
    primary, aff = _affinities(cfg, topics, rng_aff)
    adj = _connections(cfg, primary, aff, rng_graph)
    frame = _post_frame(cfg, aff, rng_frame)
    follows = _follows(cfg, aff, adj, frame, rng_follow)
    members = _members(cfg, topics, primary, aff, adj, follows, rng_prof, rng_demo, progress)
    posts = _posts(cfg, topics, frame, rng_text)
    interactions = _interactions(cfg, aff, adj, frame, rng_log)
    return DemoDataset(
        config=cfg,
        topics=[tp.name for tp in topics],
        members=members,
        posts=posts,
        interactions=interactions,
        affinities=aff,
    )
