"""中文 and English. Templates write the English text, ``t("...")`` gives it in the reader's language; a test
checks that every text a template asks for has its Chinese here.

    >>> Translator("zh")("Jobs"), Translator("en")("Jobs")
    ('作业', 'Jobs')
    >>> Translator("zh")("{n} pending", n=3)
    '3 个等待'
    >>> pick_language(None, None, "zh-CN,zh;q=0.9,en;q=0.8"), pick_language("en", "zh", None)
    ('zh', 'en')
"""

from __future__ import annotations

from api.ui import fmt

LANGUAGES = ("en", "zh")

ZH: dict[str, str] = {
    # navigation and frame
    "Zhisuan dashboard": "智算调度看板",
    "Overview": "概览",
    "Jobs": "作业",
    "Usage": "用量",
    "Capacity": "容量",
    "Tokens": "令牌",
    "Users": "用户",
    "Services": "推理服务",
    "Center": "中心",
    "Queues": "队列",
    "Nodes": "节点",
    "Billing": "计费",
    "Reports": "报告",
    "All jobs": "全部作业",
    "Log out": "退出",
    "live": "实时",
    "reconnecting": "重连中",
    "polling": "轮询",
    "updated {s} ago": "{s}前更新",
    "Center admin": "中心管理员",
    "signed in as": "当前用户",
    # login
    "Sign in": "登录",
    "Paste an API token (zhisuan admin token create, or your profile's). It is exchanged for a short-lived "
    "browser session and not kept.": "粘贴 API 令牌（zhisuan admin token create 或配置文件中的令牌）。"
    "它会被换成短期浏览器会话，不会被保存。",
    "Token": "令牌",
    "Your session expired; sign in again to go back to the page.": "会话已过期，请重新登录以返回原页面。",
    "Opening the dashboard…": "正在打开看板…",
    # states
    "pending": "等待",
    "starting": "启动中",
    "running": "运行中",
    "cancelling": "取消中",
    "succeeded": "成功",
    "failed": "失败",
    "cancelled": "已取消",
    "all": "全部",
    "active": "活动",
    # overview
    "Running jobs": "运行中作业",
    "Pending jobs": "等待中作业",
    "oldest waits {d}": "最久等待 {d}",
    "none waiting": "无等待",
    "NCU held now": "当前占用 NCU",
    "NCU-hours this month": "本月 NCU·时",
    "Bill this month": "本月账单",
    "billable": "应付",
    "free NCU-hours": "免费 NCU·时",
    "Energy": "能耗",
    "Domestic share": "国产算力占比",
    "no usage this month": "本月无用量",
    "Quotas": "配额",
    "Queue": "队列",
    "Flavor": "规格",
    "Used": "已用",
    "Guarantee": "保障",
    "Deserved": "应得",
    "Limit": "上限",
    "Borrowing limit": "借用上限",
    "borrowed": "借用",
    "borrowed {x}: preemptible": "借用 {x}：可被抢占",
    "no limit": "不限",
    "not set": "未设置",
    "Can it run now?": "现在能运行吗？",
    "Model": "型号",
    "Free healthy devices": "空闲健康设备",
    "Largest free on one node": "单节点最大空闲",
    "Your headroom": "您的余量",
    "Can start now": "现可启动",
    "up to {n} devices": "最多 {n} 个设备",
    "none: {why}": "无：{why}",
    "no free devices": "没有空闲设备",
    "quota full": "配额已满",
    "no quota for this model": "此型号无配额",
    "Allocated NCU, last 24 h": "近 24 小时占用 NCU",
    "Pending jobs, last 24 h": "近 24 小时等待作业数",
    "Latest jobs": "最近作业",
    "now": "现在",
    # jobs
    "Name": "名称",
    "State": "状态",
    "Priority": "优先级",
    "Devices": "设备",
    "Submitted": "提交",
    "Waited / ran": "等待/运行",
    "ETA start": "预计开始",
    "Attempt": "尝试",
    "User": "用户",
    "Tenant": "租户",
    "Kind": "类型",
    "Filter": "筛选",
    "Clear": "清除",
    "any": "任意",
    "training": "训练",
    "inference": "推理",
    "Newest": "最新",
    "Older": "更早",
    "no jobs match": "没有匹配的作业",
    "{n} newer jobs — show": "{n} 个更新的作业 — 显示",
    "Cancel": "取消",
    "Cancel this job?": "确定取消此作业？",
    "waited {d}": "等待 {d}",
    "ran {d}": "运行 {d}",
    "not estimated yet": "尚未估计",
    "the scheduler has not estimated it yet": "调度器尚未估计",
    "Pending by reason": "按原因统计的等待作业",
    "reason": "原因",
    "jobs": "作业",
    # job page
    "Why is it waiting?": "为什么在等待？",
    "When will it start?": "何时开始？",
    "estimated start": "预计开始",
    "estimated finish": "预计结束",
    "computed {d} ago": "{d}前计算",
    "no estimate: {why}": "无估计：{why}",
    "the scheduler gave no reason yet (it looks at new jobs within seconds)": "调度器尚未给出原因（新作业几秒内处理）",
    "Placement": "放置",
    "Rank": "序号",
    "Node": "节点",
    "Device": "设备",
    "Share": "份额",
    "Utilisation": "利用率",
    "Memory": "显存",
    "Power": "功率",
    "Temperature": "温度",
    "Health": "健康",
    "healthy": "健康",
    "unhealthy": "不健康",
    "allocated but idle": "已分配但空闲",
    "not placed": "未放置",
    "Events": "事件",
    "Logs": "日志",
    "download": "下载",
    "follow": "跟随",
    "Spec": "规格",
    "NCU-hours so far": "累计 NCU·时",
    "Charge so far": "累计费用",
    "Exit code": "退出码",
    "Message": "消息",
    "Started": "开始",
    "Finished": "结束",
    "no log output yet": "暂无日志输出",
    "telemetry {d} old": "遥测 {d}前",
    "not reported by the agent": "代理未上报",
    "this device does not report it": "此设备不提供该指标",
    "node from a cluster file: no agent reports telemetry": "来自集群文件的节点：无代理上报遥测",
    "no sample yet": "尚无采样",
    "stale": "过期",
    # usage
    "Month": "月份",
    "By model": "按型号",
    "By queue": "按队列",
    "By tenant": "按租户",
    "NCU-hours": "NCU·时",
    "Device-hours": "设备·时",
    "Charge": "费用",
    "Billable": "应付",
    "Download CSV": "下载 CSV",
    "Show": "显示",
    # capacity
    "Pool": "资源池",
    "Vendor": "厂商",
    "Site": "站点",
    "Free": "空闲",
    "Healthy": "健康",
    "Domestic": "国产",
    "yes": "是",
    "no": "否",
    # tokens and users
    "Create a token": "创建令牌",
    "Expires in (seconds, empty: never)": "有效期（秒，空为永久）",
    "Create": "创建",
    "Revoke": "吊销",
    "revoked": "已吊销",
    "expired": "已过期",
    "Created": "创建于",
    "Expires": "过期",
    "Last used": "最近使用",
    "never": "从不",
    "Role": "角色",
    "Status": "状态",
    "browser session": "浏览器会话",
    "this session": "当前会话",
    "New token (shown once — store it now):": "新令牌（仅显示一次，请立即保存）：",
    "Create a user": "创建用户",
    "disabled": "已停用",
    # services
    "Inference services": "推理服务",
    "Replicas": "副本",
    "Endpoint": "端点",
    "Request rate": "请求速率",
    "Latency vs SLO": "延迟/SLO",
    "Serving is being built (issue 16): endpoints, request rates and latency are not reported yet.": (
        "推理服务功能正在开发（issue 16）：端点、请求速率和延迟尚未上报。"
    ),
    "not reported yet (serving, issue 16)": "尚未上报（推理服务，issue 16）",
    "no inference jobs": "没有推理作业",
    # center
    "Devices by model": "按型号的设备",
    "Total": "总数",
    "Allocated": "已分配",
    "Unhealthy": "不健康",
    "On down nodes": "宕机节点上",
    "NCU total": "NCU 总量",
    "NCU free": "NCU 空闲",
    "Allocation ratio": "分配率",
    "Mean util. of allocated": "已分配设备平均利用率",
    "Idle allocated devices": "已分配但空闲的设备",
    "none": "无",
    "no telemetry for allocated devices": "已分配设备无遥测",
    "Pending demand": "等待需求",
    "devices": "设备",
    "any model": "任意型号",
    "any model: its NCU depends on where it runs": "任意型号：NCU 取决于运行位置",
    "Preemptions, 24 h": "24 小时抢占次数",
    "Nodes down / cordoned": "宕机/封锁节点",
    "Oldest heartbeat": "最旧心跳",
    "no agent nodes": "无代理节点",
    "Node grid": "节点网格",
    "island": "岛",
    "switch": "交换机",
    "all free": "全部空闲",
    "some free": "部分空闲",
    "full": "已满",
    "down": "宕机",
    "cordoned": "已封锁",
    "ready": "就绪",
    "Fragmentation": "碎片",
    "Nodes by free whole devices": "按空闲整卡数的节点",
    "Largest gang that fits now": "现可容纳的最大作业组",
    "on one node": "单节点",
    "whole free nodes": "完全空闲节点",
    "Allocation by model, last 24 h": "近 24 小时按型号分配",
    "Pending jobs over 24 h": "24 小时等待作业数",
    "Queues and tenants": "队列与租户",
    "starved": "饥饿",
    "borrowing": "借用中",
    "Dominant share": "主导份额",
    "Running": "运行",
    "Pending": "等待",
    "Policy version": "策略版本",
    "Weight": "权重",
    "Type": "类型",
    "Tier": "等级",
    "Max active jobs": "最大活动作业数",
    "Edit": "编辑",
    "Edit queue": "编辑队列",
    "New queue": "新建队列",
    "Parent": "父队列",
    "Save": "保存",
    "Saved: policy version {v}": "已保存：策略版本 {v}",
    "The policy in force is unchanged. Fix these fields:": "生效策略未改变。请修正以下字段：",
    "State ": "状态 ",
    "Heartbeat": "心跳",
    "Agent": "代理",
    "Source": "来源",
    "Jobs on this node": "此节点上的作业",
    "Health reason": "健康原因",
    "XID / ECC": "XID / ECC",
    "Grafana devices dashboard": "Grafana 设备看板",
    "Ray dashboard": "Ray 看板",
    "Simulator reports": "模拟器报告",
    "no reports: set ZHISUAN_UI_REPORTS_DIR to a folder of simulator HTML reports": (
        "没有报告：请将 ZHISUAN_UI_REPORTS_DIR 设为模拟器 HTML 报告目录"
    ),
    "Back": "返回",
    "Not found": "未找到",
    "Something went wrong": "出错了",
    "Job": "作业详情",
    "no healthy devices": "没有健康设备",
    # hints per reason code
    "Every acceptable pool is busy right now; the job starts when running jobs finish.": (
        "所有可用资源池当前都已占满；运行中的作业结束后即可开始。"
    ),
    "No pool has the models the job accepts; allow more models.": "没有资源池提供该作业接受的型号；请允许更多型号。",
    "The job needs its workers close together (one node/island) and no such group is free.": (
        "作业要求各工作进程紧邻（同一节点/岛），目前没有这样的空闲组。"
    ),
    "Enough devices are free in total, but not on few enough nodes; it waits for whole nodes.": (
        "空闲设备总数足够，但分散在太多节点上；作业在等待整节点空出。"
    ),
    "The queue is at its quota limit; it starts when the queue's other jobs finish.": (
        "队列已达配额上限；队列中其他作业结束后即可开始。"
    ),
    "The queue has no quota for this model.": "该队列没有此型号的配额。",
    "Devices are held for a larger, older job that starts first.": "设备已为更早提交的大作业预留，它将先开始。",
    "Jobs of higher priority go first.": "优先级更高的作业先运行。",
    "No pool of the installed inventory could ever run it as specified.": "现有资源中没有任何资源池能按此规格运行它。",
    # relative times
    "{s} ago": "{s}前",
    "in {s}": "{s}后",
    "{n} pending": "{n} 个等待",
}


class Translator:
    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in LANGUAGES else "en"

    def __call__(self, text: str, **values: object) -> str:
        out = ZH.get(text, text) if self.lang == "zh" else text
        return out.format(**values) if values else out

    def ago(self, seconds: float) -> str:
        if seconds >= 0:
            return self("{s} ago", s=self.unit(fmt.duration(seconds)))
        return self("in {s}", s=self.unit(fmt.duration(-seconds)))

    def unit(self, text: str) -> str:
        """Units of :func:`fmt.duration` in the reader's language."""
        if self.lang != "zh":
            return text
        for en, zh in ((" min", " 分钟"), (" s", " 秒"), (" h", " 小时"), (" d", " 天")):
            text = text.replace(en, zh)
        return text


def pick_language(query: str | None, cookie: str | None, accept: str | None) -> str:
    for choice in (query, cookie):
        if choice in LANGUAGES:
            return choice
    if accept:
        first = accept.split(",")[0].strip().lower()
        if first.startswith("zh"):
            return "zh"
    return "en"
